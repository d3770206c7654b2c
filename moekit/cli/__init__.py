"""The ``moekit`` command line: ``run`` (time a model's MoE layer and check it against the float64
spec), ``explain`` (the backend chosen and why), ``info`` (versions, devices, backends), and on a
GPU ``bench`` (speed against the roofline floor and baselines) and ``tune`` (tile tables);
``eplb`` reports how the expert load balancer evens out a skewed load."""
