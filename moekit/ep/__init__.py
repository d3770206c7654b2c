"""Expert parallelism: which rank holds which experts (placement.py), the two ways of moving tokens
to them and back (all_to_all.py, all_gather.py), the collectives with timeouts they share
(collectives.py), the choice between them (selection.py) and expert load balancing (eplb.py)."""
