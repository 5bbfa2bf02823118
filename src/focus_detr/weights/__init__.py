"""Weights: reading and loading checkpoints (:mod:`.checkpoint`), downloading them
(:mod:`.download`), detrex's key layout (:mod:`.detrex`), ImageNet backbone weights
(:mod:`.backbone`) and the float64 parity check against the original code (:mod:`.parity`)."""
