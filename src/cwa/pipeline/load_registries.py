"""Every registry whose names params can hold: importing this module loads them all, and each
adds its checks of params (cwa.config.params.check), so a Params built afterwards is checked
whole."""

import cwa.analysis.clusters  # cluster_sample, cluster_top, cluster_max_k
import cwa.data.sources  # calib_data, eval_data, finetune_data
import cwa.evaluation.perplexity  # kl_topk
import cwa.experiments.finetuning  # finetune_lr, finetune_seeds
import cwa.experiments.perturbations
import cwa.experiments.pruning  # prune_methods, prune_group, prune_nm
import cwa.scoring.metrics
import cwa.selection.ranking  # mode, controls
import cwa.selection.units  # noqa: F401  units, unit_reduce, unit_topk, unit_each
