"""The benchmarks behind the README's numbers, one runnable module each (`bench`: one-shot pruning against
Torch-Pruning; `bench_finetune`: pruning while fine-tuning; `bench_sparsity`: unstructured and 2:4 weight sparsity;
`bench_surgery`: speedup of the surgery against its FLOPs; `bench_speech`: Whisper by WER and generate() latency),
with what they share: the data sets (`fortunes`, `spoken_words`, `speech_eval_set`), the peer baseline
(`peer_torch_pruning`) and the report and plot helpers (`report`). Every timing goes through `hfprune.measure_latency`.
Run from the repository root, e.g. `python -m scripts.benchmarks.bench --help` (or `make bench`)."""
