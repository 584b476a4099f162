"""Distillation recipes: one module per recipe (perflow = FADA); shared loss math in `losses`."""
