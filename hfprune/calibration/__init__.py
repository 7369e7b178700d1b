"""Calibration: the data that scoring, tuning and data-driven sparsity run on.

Text and audio data sets turned into model-ready batches (`data`, `audio`), decoder inputs for encoder-decoders
(`seq2seq`), real (unpadded) lengths and positions (`lengths`), checks before any weight is touched (`batches`),
and the block-by-block capture of what a layer sees (`capture`).
"""
