"""Text in: the built-in corpus, the calibration/evaluation/fine-tuning sources, the tokenizer
and the fixed-length token windows cut from them."""
