"""Everything around the `hfprune` package that is not the package: `examples/` (fine-tuning scripts and the demo,
written as a user would write them), `benchmarks/` (the measurements behind the README, with their data sets, peer
baselines and report helpers) and `tools/` (converters). Scripts use only `hfprune`'s public names and run from the
repository root as modules, e.g. `python -m scripts.benchmarks.bench --help`."""
