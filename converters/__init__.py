"""edge-agent converters: the build-host half (install with ``pip install 'edge-agent[convert]'``).

The data path of a model release shows in the module names:

    dataset -> convert -> verify -> packaging (+ agent.release.package, agent.release.signing) ->
    store -> announce

``build`` strings convert/verify/package together, ``publish`` uploads and announces, ``watch``
runs the whole chain on models dropped into a folder, and ``cli`` is ``edge-convert``.
Only this package (and tests) import TensorFlow; devices never need it.
"""
