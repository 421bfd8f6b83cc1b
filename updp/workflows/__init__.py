"""The workflows: one function per command, `(typed config) -> result`.

This is the only layer that turns names and files into objects (`updp.workflows.resolve`): model
names, checkpoint paths, `--data` specs, plan files. The CLI, the Python API and the stages of
`updp run` all call these functions and never re-implement them. The configs
(`updp.workflows.config`) import nothing heavy; the functions import torch and ONNX, so import
them from their modules:

    from updp.workflows.config import PruneConfig
    from updp.workflows.prune import prune
    result = prune(PruneConfig(checkpoint="base.pt", data="mnist5k", plan="plan.json", out="p.pt"))

| command         | config           | function                              | result            |
|-----------------|------------------|---------------------------------------|-------------------|
| `updp blocks`   | `BlocksConfig`   | `workflows.blocks.list_blocks`        | `BlocksReport`    |
| `updp train`    | `TrainConfig`    | `workflows.train.train`               | `BaselineResult`  |
| `updp search`   | `SearchConfig`   | `workflows.search.run_search`         | `SearchResult`    |
| `updp prune`    | `PruneConfig`    | `workflows.prune.prune`               | `PruneResult`     |
| `updp export`   | `ExportConfig`   | `workflows.export.export`             | `ExportResult`    |
| `updp optimize` | `OptimizeConfig` | `workflows.optimize.optimize`         | `OptimizedFile`   |
| `updp eval`     | `EvalConfig`     | `workflows.evaluate.evaluate`         | dict              |
| `updp bench`    | `BenchConfig`    | `workflows.bench.bench`               | `BenchReport`     |
"""
