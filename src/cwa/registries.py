"""Every registry whose names params can hold: importing this module loads them all, and each
adds its checks of params (cwa.params.check), so a Params built afterwards is checked whole."""

import cwa.clusters  # cluster_sample, cluster_top, cluster_max_k
import cwa.finetuning  # finetune_lr, finetune_seeds
import cwa.metrics
import cwa.perturbations
import cwa.pruning  # prune_methods, prune_group, prune_nm
import cwa.ranking  # mode, controls
import cwa.sources  # calib_data, eval_data, finetune_data
import cwa.units  # noqa: F401  units, unit_reduce, unit_topk, unit_each
