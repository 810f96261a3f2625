"""Where samples come in: sources, per-stream windows, normalisation and encoding.

sources/       one module per source type, the ``Source``/``PushSource`` protocols
samples.py     ``SampleBlock`` and sample validation
window.py      per-stream sliding windows (``StreamWindowers``)
preprocess.py  normalisation, and the ``Encoder`` that quantises to the model's input
"""

__all__ = ["preprocess", "samples", "sources", "window"]
