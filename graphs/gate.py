"""What the build keeps after the parity gate: every variant that passed; the build fails only when it cannot serve.

    family.parity_gate(...) -> GateResult      every variant measured; failures: variant -> the figures past bounds
    settle(variants, result, named) -> reasons graph -> variant -> why it is left out of the artifact

Rules (why):
- A variant past its bounds is left out (no graph file) and recorded in its graph's `rejected` map with its figures
  and the reason (mmcore/manifest.py, RejectedVariant): one imprecise variant, typically int4 on a random or small
  checkpoint whose logits are near ties, must not cost the user the fp32 and int8 variants that passed.
- A quantized-cache variant (`same_weights_as`) whose float-cache sibling was rejected is rejected too, even if its
  own bounds hold: its cache is gated *relative* to that sibling (kv_parity.py), so those figures vouch for nothing
  once the sibling itself is off.
- The build fails (ParityError, nothing written) when a graph keeps no variant, since serving needs one per stage,
  or when a variant the user named with `--variants` is rejected: they asked for that graph, not for a subset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphs.families.base import VariantSpec


class ParityError(RuntimeError):
    """A variant that does not match the reference within its tolerance, where the build cannot leave it out.
    Here, not in graphs.verify, so the build imports it without torch (graphs.verify re-exports it)."""


@dataclass
class GateResult:
    figures: dict[str, dict[str, dict]]  # graph -> variant -> figures, every variant measured
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # graph -> variant -> figures past bounds

    def add(self, graph: str, name: str, figures: dict, failures: list[str]) -> None:
        self.figures.setdefault(graph, {})[name] = figures
        if failures:
            self.failures.setdefault(graph, {})[name] = "; ".join(failures)


def settle(variants: dict[str, dict[str, VariantSpec]], result: GateResult,
           named: set[str] | None = None) -> dict[str, dict[str, str]]:
    """graph -> variant -> reason, for each measured variant left out; ParityError (one line) when a graph keeps
    none, or when a rejected variant is among `named` (`graph/name`s the user asked for)."""
    rejected: dict[str, dict[str, str]] = {}
    for graph, measured in result.figures.items():
        own = result.failures.get(graph, {})
        out = dict(own)
        for name in measured:
            sibling = variants[graph][name].same_weights_as
            if sibling in own and name not in own:
                out[name] = f"its float-cache sibling {sibling} was rejected (its cache is gated against it)"
        rejected[graph] = {n: out[n] for n in variants[graph] if n in out}  # the family's order, as `variants`
    for graph, reasons in rejected.items():
        for name, reason in reasons.items():
            if named is not None and f"{graph}/{name}" in named:
                raise ParityError(f"parity gate failed for {graph} {name} (named in --variants): {reason}")
        if len(reasons) == len(result.figures[graph]):
            every = "; ".join(f"{n}: {r}" for n, r in reasons.items())
            raise ParityError(f"parity gate rejected every {graph} variant, nothing to serve: {every}")
    return {g: r for g, r in rejected.items() if r}
