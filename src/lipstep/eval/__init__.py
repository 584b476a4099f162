"""lipstep.eval: metrics and checks, one per module, with the evaluators' embedders and trainers beside them.

Metrics: `mouthreader` (MouthErr), `mouth` (pixel probe, lip-sync check), `sync` (Sync-C / Sync-D),
`fd` and `kid` (on `features`: Inception, I3D, lipstep's own), `identity` (CSIM; embedders in
`identity_embedders`, verification in `identity_verification`), `portrait` (identity-region PSNR / SSIM,
colour shift), `temporal` (flicker, warping error, drift). Trainers of lipstep's own evaluator networks
(`lipstep.nets`): `train_mouthreader`, `train_syncnet`, `train_features`, `train_identity`. Runs: `runner`
(``lipstep eval``), `longrun`, `bench`.
"""
