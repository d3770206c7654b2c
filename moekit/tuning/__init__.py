"""``moekit tune``: search the Triton experts kernels' tiles per shape and token bucket."""
