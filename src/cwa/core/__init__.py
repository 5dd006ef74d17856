"""The plumbing every concern uses: name registries, atomic I/O, progress lines, forward hooks,
devices, torch.distributed set-up and the statistics (bootstrap, permutation tests, q-values)."""
