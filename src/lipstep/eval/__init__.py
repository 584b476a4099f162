"""lipstep.eval: metrics and checks (lip sync, fidelity, identity, temporal, speed)."""
