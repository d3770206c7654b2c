"""The ``moekit`` command line: ``run`` (time a model's MoE layer and check it against the float64
spec), ``explain`` (the backend chosen and why) and ``info`` (versions, devices, backends)."""
