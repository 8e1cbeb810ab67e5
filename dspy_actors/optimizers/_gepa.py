"""``GEPA``: reflective prompt evolution over a Pareto frontier of candidates (DSPy's names
and semantics).

A *candidate* maps each predictor name to its instruction. The seed candidate (the
student's instructions) is scored on every validation example; then, until the budget of
metric calls is spent, each iteration is one of:

* **Reflective mutation.** A parent is drawn from the Pareto frontier (each validation
  example's best candidates; a candidate is drawn as often as it is among an example's
  best, dominated ones left out), or the best candidate with
  ``candidate_selection_strategy="current_best"``. It runs on the next minibatch of
  ``reflection_minibatch_size`` training examples (epoch-shuffled), capturing traces. If it
  is already perfect there (``skip_perfect_score``), nothing is proposed. Otherwise one
  predictor, the parent's next in round-robin order, gets a new instruction from
  ``reflection_lm``, which reads that predictor's inputs, outputs and the metric's
  feedback. The child runs on the same minibatch; only if its total beats the parent's is
  it scored on the whole validation set and added to the pool.
* **Merge** (``use_merge``, at most ``max_merge_invocations``, tried after a reflective
  iteration added a candidate). Two frontier candidates with a common ancestor, each having
  changed predictors the other kept as the ancestor had them, are combined predictor by
  predictor; the merge is kept if, on up to five validation examples (those where the two
  differ first), it does at least as well as the better parent, and is then fully scored.

The result is the candidate with the best mean validation score (the first, on ties).

``lookahead`` (ours): the next iterations' parents, chosen from the pool as it is, are
evaluated on their minibatches in one parallel group. Only an accepted child changes the
pool; the iterations after it are then chosen again (an evaluation of the same parent on
the same minibatch is reused). The run is the sequential algorithm's, in fewer rounds of LM
calls, for the extra calls of look-ahead evaluations a new child made stale.

Budgets, as DSPy: ``max_metric_calls``; ``max_full_evals`` (that many passes over train +
val); or ``auto="light" | "medium" | "heavy"`` (DSPy's formula). Metric calls are counted
from checkpointed step data, so a resumed run stops where an uninterrupted one does.

The metric is DSPy's GEPA metric: ``metric(gold, pred, trace, pred_name, pred_trace)``
returning a number or ``Prediction(score=..., feedback=...)``; a plain two- or
three-argument metric works too (its feedback is "This trajectory got a score of X.").

Why not the ``gepa`` package: its engine owns the loop and keeps its state (pool, frontier,
sampler positions, RNG) in memory, saved by pickling the whole state after an iteration
(``run_dir``). Our runs checkpoint each step's JSON result and replay a plan; an engine we
cannot step, whose RNG state lives in a pickle, cannot resume mid-run with the same result
and no redone LM calls, and its evaluations would not share the run's LM slots. So the
algorithm is written here as a plan: every iteration's choices come from ``step_rng`` (the
seed and the step's name) and the checkpointed results of earlier steps.

Over 400 lines: one optimizer's plan: the frontier, reflective mutation and merge (above)
share the candidate pool and its scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

from dspy_actors import _settings as settings
from dspy_actors.adapters.json_adapter import JSONAdapter
from dspy_actors.evaluate.metrics import Metric
from dspy_actors.modules._predict import Predict
from dspy_actors.optimizers._base import Optimizer, Plan, RunContext, Step, step_rng
from dspy_actors.optimizers._program import with_instructions
from dspy_actors.optimizers._rollouts import Rollout, rollouts, score_and_feedback
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.signatures.field import InputField, OutputField
from dspy_actors.signatures.signature import Signature

__all__ = ["GEPA", "ProposeInstruction", "auto_budget"]

Candidate = dict[str, str]
AUTO_CANDIDATES = {"light": 6, "medium": 12, "heavy": 18}
MERGE_SUBSAMPLE = 5


class ProposeInstruction(Signature):
    """An assistant followed the current instruction below on several task inputs. For
    each input you see what it answered and feedback on that answer.

    Write a new instruction for the assistant. Work out the task and the format of its
    inputs from the examples. Study every answer and its feedback, and put into the new
    instruction every specific fact, rule or domain detail the feedback reveals (the
    assistant will not see this feedback later), and any general strategy that worked."""

    current_instruction: str = InputField(desc="The instruction the assistant followed.")
    examples_with_feedback: list[dict[str, Any]] = InputField(
        desc="Task inputs, the assistant's answer to each, and feedback on each answer."
    )
    new_instruction: str = OutputField(desc="The new instruction for the assistant.")


def auto_budget(
    num_preds: int,
    num_candidates: int,
    valset_size: int,
    minibatch_size: int = 35,
    full_eval_steps: int = 5,
) -> int:
    """Metric calls for an ``auto`` setting: DSPy 3.4.1's formula (an initial full
    evaluation, bootstrapping, minibatch trials and periodic full evaluations)."""
    trials = int(max(2 * (num_preds * 2) * math.log2(num_candidates), 1.5 * num_candidates))
    total = valset_size + num_candidates * 5 + trials * minibatch_size
    periodic = (trials + 1) // full_eval_steps + 1
    extra = 1 if trials < full_eval_steps else 0
    return total + (periodic + extra) * valset_size


class GEPA(Optimizer):
    """Reflective prompt evolution; see the module docstring. ``reflection_lm`` proposes
    instructions (required, as in DSPy)."""

    def __init__(
        self,
        metric: Metric,
        *,
        auto: Literal["light", "medium", "heavy"] | None = None,
        max_full_evals: int | None = None,
        max_metric_calls: int | None = None,
        reflection_minibatch_size: int = 3,
        candidate_selection_strategy: Literal["pareto", "current_best"] = "pareto",
        reflection_lm: Any = None,
        skip_perfect_score: bool = True,
        component_selector: Literal["round_robin", "all"] = "round_robin",
        use_merge: bool = True,
        max_merge_invocations: int | None = 5,
        lookahead: int = 8,
        num_threads: int = 8,
        failure_score: float = 0.0,
        perfect_score: float = 1.0,
        seed: int = 0,
    ) -> None:
        budgets = [b for b in (auto, max_full_evals, max_metric_calls) if b is not None]
        if len(budgets) != 1:
            raise ValueError(
                "GEPA needs exactly one budget: auto=, max_full_evals= or max_metric_calls= "
                f"(got auto={auto!r}, max_full_evals={max_full_evals!r}, "
                f"max_metric_calls={max_metric_calls!r})"
            )
        if auto is not None and auto not in AUTO_CANDIDATES:
            raise ValueError(f"GEPA auto= is one of {sorted(AUTO_CANDIDATES)}, got {auto!r}")
        if reflection_lm is None:
            raise ValueError("GEPA needs reflection_lm= (the LM that proposes instructions)")
        if candidate_selection_strategy not in ("pareto", "current_best"):
            raise ValueError(
                "candidate_selection_strategy is 'pareto' or 'current_best', got "
                f"{candidate_selection_strategy!r}"
            )
        if component_selector not in ("round_robin", "all"):
            raise ValueError(
                f"component_selector is 'round_robin' or 'all', got {component_selector!r}"
            )
        if reflection_minibatch_size < 1:
            raise ValueError("reflection_minibatch_size must be at least 1")
        self.metric = metric
        self.auto = auto
        self.max_full_evals = max_full_evals
        self.max_metric_calls = max_metric_calls
        self.reflection_minibatch_size = reflection_minibatch_size
        self.candidate_selection_strategy = candidate_selection_strategy
        self.reflection_lm = reflection_lm
        self.skip_perfect_score = skip_perfect_score
        self.component_selector = component_selector
        self.use_merge = use_merge
        self.max_merge_invocations = max_merge_invocations
        self.lookahead = max(1, lookahead)
        self.num_threads = num_threads
        self.failure_score = failure_score
        self.perfect_score = perfect_score
        self.seed = seed

    def budget(self, num_preds: int, train_size: int, val_size: int | None) -> int:
        """The run's metric-call budget (DSPy's rules for the three settings)."""
        if self.auto is not None:
            return auto_budget(
                max(num_preds, 1),
                AUTO_CANDIDATES[self.auto],
                val_size if val_size is not None else train_size,
            )
        if self.max_full_evals is not None:
            return self.max_full_evals * (train_size + (val_size or 0))
        assert self.max_metric_calls is not None
        return self.max_metric_calls

    # -- work done inside steps --------------------------------------------------------------
    def _program(self, base: Module, candidate: Candidate) -> Module:
        return with_instructions(base.deepcopy(), candidate)

    def _scores(
        self, base: Module, candidate: Candidate, examples: list[Example], ctx: RunContext
    ) -> list[float]:
        found = rollouts(
            self._program(base, candidate), examples, self.metric, ctx,
            failure_score=self.failure_score,
        )  # fmt: skip
        return [r["score"] for r in found]

    def _full_eval(
        self,
        base: Module,
        candidate: Candidate,
        val: list[Example],
        ctx: RunContext,
        pool: list[list[float]] | None = None,
    ) -> dict[str, Any]:
        scores = self._scores(base, candidate, val, ctx)
        everyone = [*(pool or []), scores]
        best = max(_mean(s) for s in everyone)
        frontier = _mean([max(s[k] for s in everyone) for k in range(len(val))])
        return {
            "candidate": candidate,
            "scores": scores,
            "score": 100.0 * _mean(scores),
            # For progress events: the pool's best mean and the Pareto frontier's score
            # (each validation example's best score over all candidates, averaged).
            "progress": f"best {100 * best:.1f}, Pareto frontier {100 * frontier:.1f} "
            f"over {len(everyone)} candidates",
        }

    def _feedback(self, name: str, example: Example, rollout: Rollout) -> str:
        """The metric's feedback for one predictor's call (DSPy calls the metric again with
        ``pred_name`` and that predictor's trace)."""
        if rollout["error"] is not None:
            return str(rollout["error"])
        calls = [c for c in rollout["trace"] if c["predictor"] == name]
        prediction = Prediction(**rollout["outputs"])
        pred_trace = [(name, calls[-1]["inputs"], Prediction(**calls[-1]["outputs"]))]
        try:
            score, feedback = score_and_feedback(
                self.metric, example, prediction, pred_trace, name, pred_trace
            )
        except Exception as exc:
            return f"The metric raised {type(exc).__name__}: {exc}"
        return feedback if feedback is not None else f"This trajectory got a score of {score}."

    def _reflective_records(
        self, name: str, batch: list[Example], found: list[Rollout]
    ) -> list[dict[str, Any]]:
        records = []
        for example, rollout in zip(batch, found, strict=True):
            calls = [c for c in rollout["trace"] if c["predictor"] == name]
            if not calls and rollout["error"] is None:
                continue
            records.append(
                {
                    "Inputs": calls[-1]["inputs"] if calls else example.inputs().to_dict(),
                    "Generated Outputs": calls[-1]["outputs"] if calls else rollout["error"],
                    "Feedback": self._feedback(name, example, rollout),
                }
            )
        return records

    def _propose(self, instruction: str, records: list[dict[str, Any]]) -> str:
        """Ask ``reflection_lm`` for a new instruction, as DSPy 3.4.1 does: the
        ``ProposeInstruction`` fields through the JSON adapter."""
        proposer = Predict(ProposeInstruction)
        proposer.lm = self.reflection_lm
        with settings.context(adapter=JSONAdapter()):
            found = proposer(current_instruction=instruction, examples_with_feedback=records)
        text = str(found.new_instruction or "").strip()
        return text or instruction

    def _minibatch_eval(
        self, base: Module, parent: Candidate, batch: list[Example], ctx: RunContext
    ) -> dict[str, Any]:
        """The parent on a minibatch, traces and feedback kept for reflection."""
        found = rollouts(
            self._program(base, parent), batch, self.metric, ctx, failure_score=self.failure_score
        )
        return {"scores": [r["score"] for r in found], "rollouts": found}

    def _propose_child(
        self,
        base: Module,
        parent: Candidate,
        components: list[str],
        batch: list[Example],
        found: list[Rollout],
        ctx: RunContext,
    ) -> dict[str, Any]:
        """New instructions for ``components`` from the parent's traces and feedback, and
        the child's scores on the same minibatch."""
        child = dict(parent)
        for name in components:
            records = self._reflective_records(name, batch, found)
            if records:
                child[name] = self._propose(parent[name], records)
        if child == parent:
            return {"child": None, "child_scores": None}
        return {"child": child, "child_scores": self._scores(base, child, batch, ctx)}

    def _merge_eval(
        self, base: Module, merged: Candidate, val: list[Example], ids: list[int], ctx: RunContext
    ) -> dict[str, Any]:
        return {"ids": ids, "scores": self._scores(base, merged, [val[i] for i in ids], ctx)}

    # -- the plan ----------------------------------------------------------------------------
    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        train = list(trainset)
        if not train:
            raise ValueError("GEPA needs a non-empty trainset")
        val = list(valset) if valset else train
        base = student.deepcopy()
        names = [n for n, _ in base.named_predictors()]
        if not names:
            raise ValueError("GEPA needs a program with at least one predictor")
        budget = self.budget(len(names), len(train), len(valset) if valset else None)
        seed_candidate: Candidate = {
            n: p.signature.instructions for n, p in base.named_predictors()
        }

        data = yield Step("seed/eval", partial(self._full_eval, base, seed_candidate, val, ctx))
        pool = _Pool(val_size=len(val))
        pool.add(seed_candidate, data["scores"], parents=[])
        calls = len(val)
        iteration = reflections = merges_done = merges_due = 0
        next_component: dict[int, int] = {}
        tried_merges: set[tuple[int, int, int]] = set()
        max_merges = self.max_merge_invocations if self.max_merge_invocations is not None else 0
        size = self.reflection_minibatch_size
        evaluated: dict[str, dict[str, Any]] = {}  # parent-on-minibatch results, by step name
        while calls < budget:
            if self.use_merge and merges_due > 0 and merges_done < max_merges:
                step = f"iter{iteration}"
                merges_due -= 1
                found = pool.merge_candidate(step_rng(ctx.seed, f"{step}/merge"), tried_merges)
                if found is not None:
                    iteration += 1
                    merged, i, j, ids = found
                    merges_done += 1
                    res = yield Step(
                        f"{step}/merge", partial(self._merge_eval, base, merged, val, ids, ctx)
                    )
                    calls += len(ids)
                    parent_best = max(
                        sum(pool.scores[i][k] for k in ids), sum(pool.scores[j][k] for k in ids)
                    )
                    if sum(res["scores"]) >= parent_best:
                        full = yield Step(
                            f"{step}/merge/full_eval",
                            partial(self._full_eval, base, merged, val, ctx, list(pool.scores)),
                        )
                        calls += len(val)
                        pool.add(merged, full["scores"], parents=[i, j])
                    continue
            # Look ahead: the next iterations' parents, chosen from the pool as it is now,
            # are evaluated on their minibatches at once. The pool changes only when a child
            # is accepted; the iterations after that are chosen again from the new pool (an
            # evaluation whose parent is chosen again is reused: same candidate, same batch).
            # So the run is the sequential algorithm's, in fewer rounds of LM calls.
            ahead = max(1, min(self.lookahead, -(-(budget - calls) // size)))
            wave = []
            for w in range(ahead):
                rng = step_rng(ctx.seed, f"iter{iteration + w}/select")
                parent = (
                    pool.pareto_choice(rng)
                    if self.candidate_selection_strategy == "pareto"
                    else pool.best()
                )
                ids = _minibatch(ctx.seed, len(train), size, reflections + w)
                wave.append(
                    (iteration + w, parent, ids, f"iter{iteration + w}/minibatch/p{parent}")
                )
            todo = [
                Step(
                    name,
                    partial(
                        self._minibatch_eval,
                        base,
                        pool.candidates[parent],
                        [train[i] for i in ids],
                        ctx,
                    ),
                )
                for _, parent, ids, name in wave
                if name not in evaluated
            ]
            if todo:
                results: list[dict[str, Any]] = yield todo
                evaluated.update({t.name: r for t, r in zip(todo, results, strict=True)})
            for it, parent, ids, name in wave:
                if calls >= budget:
                    break
                iteration, reflections = it + 1, reflections + 1
                ev = evaluated[name]
                calls += len(ids)
                if self.skip_perfect_score and all(x >= self.perfect_score for x in ev["scores"]):
                    continue
                if self.component_selector == "all":
                    components = names
                else:
                    k = next_component.get(parent, 0)
                    next_component[parent] = k + 1
                    components = [names[k % len(names)]]
                res = yield Step(
                    f"iter{it}/propose",
                    partial(
                        self._propose_child,
                        base,
                        pool.candidates[parent],
                        components,
                        [train[i] for i in ids],
                        ev["rollouts"],
                        ctx,
                    ),
                )
                if res["child"] is None:
                    continue
                calls += len(ids)
                if sum(res["child_scores"]) <= sum(ev["scores"]):
                    continue
                full = yield Step(
                    f"iter{it}/full_eval",
                    partial(self._full_eval, base, res["child"], val, ctx, list(pool.scores)),
                )
                calls += len(val)
                pool.add(res["child"], full["scores"], parents=[parent])
                merges_due += 1
                break  # the rest of the wave was chosen from the old pool
        return self._program(base, pool.candidates[pool.best()])


class _Pool:
    """Candidates, their validation scores and parents; the Pareto frontier over them."""

    def __init__(self, val_size: int) -> None:
        self.val_size = val_size
        self.candidates: list[Candidate] = []
        self.scores: list[list[float]] = []
        self.parents: list[list[int]] = []

    def add(self, candidate: Candidate, scores: list[float], parents: list[int]) -> None:
        self.candidates.append(candidate)
        self.scores.append([float(s) for s in scores])
        self.parents.append(parents)

    def mean(self, i: int) -> float:
        return _mean(self.scores[i])

    def best(self) -> int:
        top = max(self.mean(i) for i in range(len(self.candidates)))
        return next(i for i in range(len(self.candidates)) if self.mean(i) == top)

    def fronts(self) -> list[set[int]]:
        """For each validation example, the candidates with its best score."""
        out = []
        for k in range(self.val_size):
            top = max(s[k] for s in self.scores)
            out.append({i for i, s in enumerate(self.scores) if s[k] == top})
        return out

    def frontier(self) -> list[int]:
        """Candidates on some example's front and not dominated: a candidate is dominated
        when another is on every front it is on and more (or on the same fronts with a
        higher mean; the earlier one, on a full tie)."""
        fronts = self.fronts()
        member = {i: {k for k, f in enumerate(fronts) if i in f} for i in range(len(self.scores))}
        keep = []
        for i, mine in member.items():
            if not mine:
                continue
            dominated = any(
                j != i
                and mine <= theirs
                and (mine < theirs or (self.mean(j), -j) > (self.mean(i), -i))
                for j, theirs in member.items()
            )
            if not dominated:
                keep.append(i)
        return keep

    def pareto_choice(self, rng: Any) -> int:
        """A frontier candidate, drawn as often as it is among an example's best."""
        keep = set(self.frontier())
        weighted = [i for front in self.fronts() for i in sorted(front) if i in keep]
        return int(rng.choice(weighted)) if weighted else self.best()

    def ancestors(self, i: int) -> set[int]:
        seen: set[int] = set()
        todo = list(self.parents[i])
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(self.parents[p])
        return seen

    def merge_candidate(
        self, rng: Any, tried: set[tuple[int, int, int]]
    ) -> tuple[Candidate, int, int, list[int]] | None:
        """Two frontier candidates with a common ancestor, merged predictor by predictor,
        and the validation examples to judge the merge on; None if no pair qualifies."""
        front = self.frontier()
        pairs = [(i, j) for i in front for j in front if i < j]
        rng.shuffle(pairs)
        for i, j in pairs:
            anc_i, anc_j = self.ancestors(i), self.ancestors(j)
            if i in anc_j or j in anc_i:
                continue
            for a in sorted(anc_i & anc_j, reverse=True):
                if (i, j, a) in tried or self.mean(a) > min(self.mean(i), self.mean(j)):
                    continue
                merged = self._combine(i, j, a)
                if merged is None or merged in self.candidates:
                    continue
                tried.add((i, j, a))
                return merged, i, j, self._subsample(rng, i, j)
        return None

    def _combine(self, i: int, j: int, a: int) -> Candidate | None:
        ci, cj, ca = self.candidates[i], self.candidates[j], self.candidates[a]
        # Worth merging only if each kept, somewhere, what the ancestor had while the other
        # changed it: then the two carry different improvements.
        if not any((ci[n] == ca[n]) != (cj[n] == ca[n]) for n in ca):
            return None
        better = i if self.mean(i) >= self.mean(j) else j
        merged = {}
        for n in ca:
            if ci[n] == ca[n]:
                merged[n] = cj[n]
            elif cj[n] == ca[n]:
                merged[n] = ci[n]
            else:
                merged[n] = self.candidates[better][n]
        return merged

    def _subsample(self, rng: Any, i: int, j: int) -> list[int]:
        differ = [k for k in range(self.val_size) if self.scores[i][k] != self.scores[j][k]]
        same = [k for k in range(self.val_size) if self.scores[i][k] == self.scores[j][k]]
        rng.shuffle(differ)
        rng.shuffle(same)
        return sorted((differ + same)[:MERGE_SUBSAMPLE])


def _minibatch(seed: int, size: int, batch: int, index: int) -> list[int]:
    """The ``index``-th minibatch: consecutive slices of per-epoch seeded shuffles of the
    training set (an epoch's tail that cannot fill a batch is topped up from the next)."""
    per_epoch = max(1, size // batch) if size >= batch else 1
    epoch, slot = divmod(index, per_epoch)
    order = list(range(size))
    step_rng(seed, f"epoch{epoch}").shuffle(order)
    if size < batch:
        return order
    return order[slot * batch : (slot + 1) * batch]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
