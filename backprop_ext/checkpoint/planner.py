"""Choosing segments and recompute levels for CheckpointedSequential under a memory budget.

From one measured plain step (memory.profile_sequential: what each module saves for
backward, creates and costs) the planner predicts, for any cut of the modules into contiguous
segments with a level each, the activation memory at the step's peak and the time recomputation
adds; it returns the plan that fits the budget with the least recomputation.

Model. Backward runs the segments last to first. While it works on segment j, alive are what the
segments before j keep plus what j needs to run its backward:

    level            keeps until its backward   needs during its backward     recomputes
    none             what its modules save       the same                      nothing
    selective        that, less rebuilt outputs  the same                      rebuilt outputs
    full             its input                   input + all its modules save  its forward
    full+selective   its input                   input + selective's set       both

    and every segment but the last also needs the gradient of its output, which arrives as its
    backward starts (the last one's is the loss's, the same in every plan).

    predicted peak = max_j (sum of keeps before j + needs of j)
                     + the plain step's measured peak minus its saved bytes (backward's working
                       set: the gradients in flight, weight-gradient temporaries, workspace)

A rebuilt output is counted as rebuilt only when its source is saved within the same segment
(the scope does link across consecutive selective segments; the model then over-predicts
slightly). The unit is what the plain step's peak is measured in: the allocator's bytes on CUDA,
the CPU allocator's bytes (AllocatorPeak) elsewhere; a fraction is of that peak.

Measurement: the model is exact only as far as backward's working set resembles the plain
step's; choose_measured runs the chosen plan once, corrects the model by its error and chooses
again, so the plan returned is one whose peak was measured within the budget.

Search: dynamic programming over cut points, keeping at each point the plans not dominated in
(bytes kept so far, peak so far, recompute so far); every plan is reachable, so the choice is
the exact optimum of the model.
"""

from __future__ import annotations

import dataclasses

from .memory import StepProfile

LEVELS = ("none", "selective", "full", "full+selective")


@dataclasses.dataclass
class CheckpointPlan:
    """What CheckpointedSequential runs, and what the planner predicts of it.

    segments: (start, end, level) in order; modules [start, end) run under `level`.
    predicted_bytes: activation memory at the step's peak, predicted (see `unit`).
    recompute_s: time recomputation adds to a step, predicted from the measured forward.
    plain_bytes: the plain step's activation memory, measured in the same unit.
    forward_s: the plain forward's measured time (recompute_s / forward_s: the share re-run).
    budget_bytes: the budget asked for (None when the plan was given, not chosen).
    unit: "CPU allocator bytes" (AllocatorPeak) or "CUDA allocator bytes".
    measured_bytes: the plan's peak measured on one step (choose_measured), or None.
    """

    segments: list
    predicted_bytes: int | None = None
    recompute_s: float | None = None
    plain_bytes: int | None = None
    forward_s: float | None = None
    budget_bytes: int | None = None
    unit: str = ""
    measured_bytes: int | None = None

    @property
    def fits(self) -> bool | None:
        """Within the budget: measured, when it was, else predicted."""
        nbytes = self.measured_bytes if self.measured_bytes is not None else self.predicted_bytes
        if self.budget_bytes is None or nbytes is None:
            return None
        return nbytes <= self.budget_bytes

    def __str__(self) -> str:
        lines = [f"{'modules':<12}level"]
        lines += [f"{f'[{a}, {b})':<12}{level}" for a, b, level in self.segments]
        if self.predicted_bytes is not None:
            mib = 2.0 ** 20
            lines.append(f"predicted activation memory: {self.predicted_bytes / mib:.2f} MiB "
                         f"({self.predicted_bytes / self.plain_bytes:.2f}x plain, "
                         f"{self.plain_bytes / mib:.2f} MiB; {self.unit})")
            if self.measured_bytes is not None:
                lines.append(f"measured activation memory: {self.measured_bytes / mib:.2f} MiB "
                             f"({self.measured_bytes / self.plain_bytes:.2f}x plain)")
            lines.append(f"predicted recompute: {1e3 * self.recompute_s:.3f} ms a step "
                         f"({self.recompute_s / self.forward_s:.2f}x the forward, "
                         f"{1e3 * self.forward_s:.3f} ms)")
        if self.budget_bytes is not None:
            verdict = "fits" if self.fits else "does NOT fit (the plan with the least memory)"
            lines.append(f"budget: {self.budget_bytes / 2.0 ** 20:.2f} MiB: {verdict}")
        return "\n".join(lines)


class _Costs:
    """Per segment [i, k) and level: (keeps, needs, recompute seconds)."""

    def __init__(self, profile: StepProfile):
        self.profile = profile
        self.n = len(profile.forward_s)
        grads = list(profile.grad_bytes or [0] * self.n)
        # after[m]: bytes of the parameters' gradients alive once module m's backward has run
        # (its own and those of every module after it: backward made them first).
        self.after = [0] * (self.n + 1)
        for m in reversed(range(self.n)):
            self.after[m] = self.after[m + 1] + grads[m]
        self._cache: dict = {}
        # Backward's working set on top of what the model counts (the gradients in flight,
        # weight-gradient temporaries, workspace): what the plain step's measured peak adds to
        # the model's plain plan.
        self.extra = 0
        if self.n:
            self.extra = max(0, profile.peak_bytes - self(0, self.n, "none")[1])

    def __call__(self, i: int, k: int, level: str) -> tuple[int, int, float]:
        key = (i, k, level)
        if key not in self._cache:
            self._cache[key] = self._compute(i, k, level)
        return self._cache[key]

    def _compute(self, i: int, k: int, level: str) -> tuple[int, int, float]:
        p = self.profile
        inside = range(i, k)
        saved = [r for r in p.records if any(s in inside for s in r.savers)]
        selective = level in ("selective", "full+selective")

        def rebuilt(r) -> bool:
            return (selective and r.source is not None
                    and any(s in inside for s in r.source.savers))

        kept = [r for r in saved if not rebuilt(r)]
        rebuild_s = sum(p.rebuild_s.get(id(r), 0.0) for r in saved if rebuilt(r))
        grad_in = p.output_bytes[k - 1] if k < self.n else 0
        checkpointed = level in ("full", "full+selective")
        # Checkpointed: keeps its input; its recomputation re-creates what its modules create.
        input_bytes = (p.output_bytes[i - 1] if i > 0 else 0) if checkpointed else 0
        held = [r for r in kept if r.producer >= i] if checkpointed else kept
        # While backward runs module m of the segment, what the segment keeps is alive until
        # the first module saving it has run (kept[m - i]: freed after m), and the gradients of
        # m and every module after it have been made: the segment's peak is the largest sum.
        freed_after = [0] * (k - i)
        for r in held:
            freed_after[min(s for s in r.savers if s in inside) - i] += r.nbytes
        alive, peak = sum(freed_after), 0
        for m in reversed(inside):  # for m = k - 1 first: all of it, before any is freed
            peak = max(peak, alive + self.after[m])
            alive -= freed_after[m - i]
        needs = input_bytes + peak + grad_in
        if not checkpointed:
            return sum(r.nbytes for r in kept), needs, rebuild_s
        return input_bytes, needs, sum(p.forward_s[i:k]) + rebuild_s

    def evaluate(self, segments) -> tuple[int, float]:
        """(predicted peak bytes, recompute seconds) of a given plan."""
        before, peak, cost = 0, 0, 0.0
        for i, k, level in segments:
            keeps, needs, seconds = self(i, k, level)
            peak = max(peak, before + needs)
            before += keeps
            cost += seconds
        return peak + self.extra, cost


def plain_bytes(profile: StepProfile) -> int:
    """The plain step's activation memory in the planner's unit."""
    return profile.peak_bytes


def unit(profile: StepProfile) -> str:
    return "CUDA allocator bytes" if profile.device.startswith("cuda") else "CPU allocator bytes"


def describe(profile: StepProfile, segments, budget_bytes: int | None = None) -> CheckpointPlan:
    """The predictions for a plan chosen by hand."""
    peak, cost = _Costs(profile).evaluate(segments)
    return CheckpointPlan(list(segments), peak, cost, plain_bytes(profile),
                          sum(profile.forward_s), budget_bytes, unit(profile))


def choose(profile: StepProfile, budget_bytes: int, levels=LEVELS,
           max_segment: int | None = None) -> CheckpointPlan:
    """The plan with the least predicted recompute whose predicted peak fits `budget_bytes`, or,
    when none fits, the one with the least predicted peak. max_segment: the longest segment
    allowed (1: a level per module, for blocks a model calls one by one)."""
    costs = _Costs(profile)
    n = costs.n
    if n == 0:
        return describe(profile, [], budget_bytes)
    # fronts[i]: plans of modules [0, i) as (kept, peak, seconds, segments), none dominated.
    fronts: list[list] = [[] for _ in range(n + 1)]
    fronts[0] = [(0, 0, 0.0, ())]
    for i in range(n):
        for kept, peak, seconds, segs in fronts[i]:
            for k in range(i + 1, n + 1 if max_segment is None else min(n, i + max_segment) + 1):
                for level in levels:
                    if (max_segment is None and segs and segs[-1][2] == level
                            and level in ("none", "selective")):
                        continue  # runs as one segment with the previous: enumerated as such
                    keeps, needs, cost = costs(i, k, level)
                    _insert(fronts[k], (kept + keeps, max(peak, kept + needs), seconds + cost,
                                        segs + ((i, k, level),)))
    finals = [(peak + costs.extra, seconds, segs) for _, peak, seconds, segs in fronts[n]]
    fitting = [f for f in finals if f[0] <= budget_bytes]
    if fitting:
        best = min(fitting, key=lambda f: (f[1], f[0], len(f[2])))
    else:
        best = min(finals, key=lambda f: (f[0], f[1], len(f[2])))
    return CheckpointPlan(_merge(best[2]), best[0], best[1], plain_bytes(profile),
                          sum(profile.forward_s), budget_bytes, unit(profile))


def choose_measured(profile: StepProfile, budget_bytes: int, measure, levels=LEVELS,
                    tries: int = 3, max_segment: int | None = None) -> CheckpointPlan:
    """choose(), checked and corrected by measurement. The chosen plan is run once
    (measure(segments) -> its peak bytes); its error against the prediction is taken to be the
    model's on every plan of this stack, and the choice is made again with the budget corrected
    by it, until a plan repeats or `tries` plans were measured. Returns the measured plan that
    fits with the least predicted recompute or, when none does, the one measured smallest."""
    measured: dict = {}
    plan = choose(profile, budget_bytes, levels, max_segment)
    for _ in range(tries):
        key = tuple(plan.segments)
        if key in measured:
            break
        plan.measured_bytes = measure(plan.segments)
        measured[key] = plan
        error = plan.measured_bytes - plan.predicted_bytes
        plan = choose(profile, budget_bytes - error, levels, max_segment)
    plans = list(measured.values())
    fitting = [p for p in plans if p.measured_bytes <= budget_bytes]
    if fitting:
        best = min(fitting, key=lambda p: (p.recompute_s, p.measured_bytes))
    else:
        best = min(plans, key=lambda p: (p.measured_bytes, p.recompute_s))
    best.budget_bytes = budget_bytes
    return best


def _insert(front: list, plan: tuple) -> None:
    kept, peak, seconds = plan[:3]
    for other in front:
        if other[0] <= kept and other[1] <= peak and other[2] <= seconds:
            return
    front[:] = [o for o in front if not (kept <= o[0] and peak <= o[1] and seconds <= o[2])]
    front.append(plan)


def _merge(segments) -> list:
    """Joins neighbouring "none" or "selective" segments of the same level: the same run."""
    out = []
    for i, k, level in segments:
        if out and out[-1][2] == level and level in ("none", "selective"):
            out[-1] = (out[-1][0], k, level)
        else:
            out.append((i, k, level))
    return out
