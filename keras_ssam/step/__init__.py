"""The parts of an `SSAMModel` training step, one concern per module.

- `plan`: which variables the step differentiates (the support) and where it
  can reuse the first pass's activations (the cut);
- `passes`: the forward-backward passes at `w`, at `w + e` and from a cut;
- `guard`: loss-scale unscaling, replica agreement, coupled weight decay and
  the skip of non-finite steps;
- `mask_state`, `support`: the masks and the support the step was traced for
  (mixins of `SSAMModel`);
- `saving`: atomic saves, seed states, checked loads (a mixin);
- `monitors`: the callbacks `fit()` adds;
- `arguments`: eager argument checks.

None of them imports the masks, schedules, experiments or the CLI.
"""
