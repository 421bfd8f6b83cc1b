"""Training: the shared loop, the λ and learning-rate schedules, distillation, progressive subnet
training (UPDP step 3), the supernet (step 1) and the subnet search and its scoring (step 2).

Nothing here resolves files or names: the workflows (`updp.workflows`) hand in built modules,
dataset bundles and typed settings, and the search gets latency through the `LatencyPredictor`
protocol, so training never imports the exporter or the latency runner.
"""
