def moekit_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    raise NotImplementedError("placeholder, being written")
