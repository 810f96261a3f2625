"""Where the model runs: the runtime seam, the active model, postprocessing.

runtime.py      the only module importing a TFLite runtime (LiteRT, tflite-runtime, TF)
active.py       ``ActiveModel``: an interpreter plus the release it came from
loading.py      ``model.path`` (file, package, builtin demo) -> ``ActiveModel``
postprocess.py  classification, regression, anomaly, raw, detection -> the ``outputs`` object
detection.py    ``type = "detection"``: rising edges of a sliding mean -> events
modelinfo.py    ``edge-agent inspect``/``predict``: describing and feeding a model
tflite_graph.py reading (and optionally rewriting) the flatbuffer graph
"""

__all__ = [
    "active",
    "detection",
    "loading",
    "modelinfo",
    "postprocess",
    "runtime",
    "tflite_graph",
]
