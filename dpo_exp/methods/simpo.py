"""SimPO (simple preference optimisation): TRL's experimental CPOTrainer with `loss_type="simpo"` on the task's
pairs. Reference-free (length-normalised log-probs, a target margin gamma); the run's evaluation still measures KL
and win rate against the run's starting model, so SimPO sits on the same reward-KL frontier as DPO."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PreferenceData
from ..errors import UserError
from ..training.stage import TrainResult
from .base import Method, MethodSettings, train_trl
from .orpo import reference_free_trainer


class SimPO(Method):
    """CPO's trainer with the SimPO loss (cpo_alpha=0: no behaviour-cloning term, as in the SimPO paper)."""

    def check(self, cfg) -> None:
        loss = (cfg.method.get("args") or {}).get("loss_type")
        if loss != "simpo":
            raise UserError(
                f"method=simpo trains CPO's loss_type=simpo; method.args.loss_type={loss} is another method"
            )
        super().check(cfg)

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        from ..trl_compat import CPOTrainer

        def build(args, callbacks):
            return reference_free_trainer(CPOTrainer, policy, data, settings, args, callbacks)

        return train_trl(build, reference, settings)
