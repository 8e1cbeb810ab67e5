"""``SIMBA``: stochastic introspective mini-batch ascent (DSPy's names and semantics).

Each of ``max_steps`` steps takes the next minibatch of ``bsize`` training examples (a
seeded shuffle, reshuffled when the set runs out) and:

1. **Samples** ``num_candidates`` trajectories per example: each from a program drawn by
   softmax over the mean scores of the best programs so far (the baseline always among
   them; ``temperature_for_sampling``), run at temperature 1.0.
2. **Buckets** the trajectories by example and sorts the buckets by how much their scores
   vary (max - min, then max, then max - mean): the examples where some attempt did better
   than another teach the most.
3. **Makes candidates**, one per bucket in that order (at most ``num_candidates + 1``): a
   source program drawn by softmax (``temperature_for_candidates``), some of its demos
   dropped (a Poisson draw once it holds demos, at least one once it holds ``max_demos``),
   then one strategy at random: *append a demo* (the best trajectory's calls become demos)
   or *append a rule* (``prompt_model`` contrasts the better and the worse trajectory and
   gives each predictor advice, appended to its instructions). A strategy whose trajectory
   scores do not stand out from the batch (best at or below its 10th percentile, or worst at
   or above its 90th) changes nothing: the source, demos thinned, is the candidate (as in
   DSPy). An advice answer that is not a dict makes no candidate.
4. **Scores** the candidates on the minibatch; the best becomes the step's winner; all join
   the pool with their minibatch scores.

At the end up to ``num_candidates + 1`` winners (evenly spaced over the steps, the baseline
first) are scored on the whole training set, and the best is returned (the first on ties).
Which winners those are is known in advance when every step has one, so each is scored
beside the next step's sampling rather than all at the end (a winner so scored that a
step without candidates pushed out of the picks is not used).

Each phase is a checkpointed step (``step<k>/sample``; ``step<k>/candidates``, which makes
the candidates and scores each as soon as it exists; ``final/eval/<program>``); every random draw
comes from ``step_rng`` and the checkpointed results, so a resumed run makes the same
choices without redoing LM calls.
The trajectories of a phase run in parallel, bounded by the run's LM slots.

Over 400 lines: one optimizer's plan, with DSPy's sampling and candidate rules (above) kept
in the order DSPy applies them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

from dspy_actors import _settings as settings
from dspy_actors.evaluate._parallel import parallel_map
from dspy_actors.evaluate.metrics import Metric
from dspy_actors.modules._predict import Predict
from dspy_actors.optimizers._base import Optimizer, Plan, RunContext, Step, step_rng
from dspy_actors.optimizers._program import demo_json
from dspy_actors.optimizers._rollouts import Rollout, rollouts
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.signatures.field import InputField, OutputField
from dspy_actors.signatures.signature import Signature

__all__ = ["SIMBA", "OfferFeedback"]

State = dict[str, dict[str, Any]]
"""A program as data: predictor name -> {"instructions": str, "demos": [JSON objects]}."""


class OfferFeedback(Signature):
    """Two runs of a program built from LM-driven modules are shown: one that earned a
    higher reward and one that earned a lower reward on the same input. Help each module do
    better on similar inputs in future. The modules will not see these runs, only your
    advice, so make it concrete yet general: contrast what the worse run did with what the
    better run did, address each module's own sub-task, and give every module name exactly
    one entry in the advice."""

    program_code: str = InputField(desc="The program being analysed")
    modules_defn: str = InputField(desc="Each module of the program with its inputs and outputs")
    program_inputs: str = InputField(desc="The inputs the program was given")
    oracle_metadata: str = InputField(desc="Hidden labels of this training example")
    worse_program_trajectory: str = InputField(desc="Each module's inputs and outputs, worse run")
    worse_program_outputs: str = InputField(desc="The program's outputs in the worse run")
    worse_reward_value: float = InputField(desc="The reward of the worse run")
    worse_reward_info: str = InputField(desc="What the metric said about the worse run")
    better_program_trajectory: str = InputField(desc="Each module's inputs and outputs, better run")
    better_program_outputs: str = InputField(desc="The program's outputs in the better run")
    better_reward_value: float = InputField(desc="The reward of the better run")
    better_reward_info: str = InputField(desc="What the metric said about the better run")
    module_names: list[str] = InputField(desc="The modules to advise, by name")
    discussion: str = OutputField(desc="Where each module went wrong, if it did")
    module_advice: dict[str, str] = OutputField(
        desc="Per module name: if the module receives <some kind of input>, it should <do "
        "this, avoid that>; advice that makes it act like the better run"
    )


class SIMBA(Optimizer):
    """Stochastic mini-batch ascent with rules and demos; see the module docstring.
    ``prompt_model`` writes the rules (the settings' LM, else the student's, if None)."""

    def __init__(
        self,
        *,
        metric: Metric,
        bsize: int = 32,
        num_candidates: int = 6,
        max_steps: int = 8,
        max_demos: int = 4,
        prompt_model: Any = None,
        demo_input_field_maxlen: int = 100_000,
        num_threads: int = 8,
        temperature_for_sampling: float = 0.2,
        temperature_for_candidates: float = 0.2,
        seed: int = 0,
    ) -> None:
        if bsize < 1 or num_candidates < 1 or max_steps < 0:
            raise ValueError(
                "SIMBA needs bsize >= 1, num_candidates >= 1 and max_steps >= 0 (got "
                f"bsize={bsize}, num_candidates={num_candidates}, max_steps={max_steps})"
            )
        self.metric = metric
        self.bsize = bsize
        self.num_candidates = num_candidates
        self.max_steps = max_steps
        self.max_demos = max_demos
        self.prompt_model = prompt_model
        self.demo_input_field_maxlen = demo_input_field_maxlen
        self.num_threads = num_threads
        self.temperature_for_sampling = temperature_for_sampling
        self.temperature_for_candidates = temperature_for_candidates
        self.seed = seed

    # -- programs as data ---------------------------------------------------------------
    @staticmethod
    def _state(program: Module) -> State:
        return {
            name: {
                "instructions": p.signature.instructions,
                "demos": [json.loads(json.dumps(demo_json(d), default=str)) for d in p.demos],
            }
            for name, p in program.named_predictors()
        }

    @staticmethod
    def _build(base: Module, state: State, temperature: float | None = None) -> Module:
        program = base.deepcopy()
        for name, predictor in program.named_predictors():
            spec = state[name]
            predictor.signature = predictor.signature.with_instructions(spec["instructions"])
            predictor.demos = [Example(d) for d in spec["demos"]]
            if temperature is not None:
                predictor.config["temperature"] = temperature
        return program

    # -- work done inside steps ---------------------------------------------------------
    def _sample(
        self,
        base: Module,
        states: list[State],
        chosen: list[int],
        batch: list[Example],
        ctx: RunContext,
    ) -> dict[str, Any]:
        """Trajectory ``i`` runs program ``chosen[i]`` on ``batch[i % len(batch)]``. Each
        program is built once and runs all its trajectories in one parallel rollout."""
        by_program: dict[int, list[int]] = {}
        for i, c in enumerate(chosen):
            by_program.setdefault(c, []).append(i)

        def run(c: int) -> list[Rollout]:
            program = self._build(base, states[c], temperature=1.0)
            examples = [batch[i % len(batch)] for i in by_program[c]]
            return rollouts(program, examples, self.metric, ctx)

        groups = list(by_program)
        found = parallel_map(run, groups, num_threads=max(1, len(groups)), cancel=ctx.cancel)
        outputs: list[Rollout | None] = [None] * len(chosen)
        for c, results in zip(groups, found, strict=True):
            for i, rollout in zip(by_program[c], results, strict=True):
                outputs[i] = rollout
        return {"programs": chosen, "outputs": outputs}

    def _advice(self, base: Module, job: dict[str, Any], model: Any) -> dict[str, str]:
        predictor = Predict(OfferFeedback)
        predictor.lm = model
        # Every input goes as text, JSON for structured values (DSPy's wire convention).
        fields = {k: v if isinstance(v, str) else json.dumps(v, indent=2) for k, v in job.items()}
        fields["program_code"] = type(base).__name__
        advice = predictor(**fields).module_advice
        if not isinstance(advice, dict):
            raise ValueError(f"SIMBA's prompt model gave advice that is not a dict: {advice!r}")
        return {str(k): str(v) for k, v in advice.items()}

    def _candidates(
        self, base: Module, plans: list[dict[str, Any]], batch: list[Example], ctx: RunContext
    ) -> dict[str, Any]:
        """Make each planned candidate and score it on the minibatch. Each candidate is
        scored as soon as it exists (a demo candidate does not wait for another's advice):
        all of it shares the run's LM slots."""
        model = self.prompt_model or settings.get("lm") or base.get_lm()

        def make(plan: dict[str, Any]) -> State | None:
            state: State = json.loads(json.dumps(plan["source"]))
            if plan["strategy"] == "none":
                return state
            if plan["strategy"] == "demo":
                for name, demo in plan["demos"].items():
                    state[name]["demos"].append(demo)
                return state
            try:
                with ctx.slots:
                    advice = self._advice(base, plan["rule"], model)
            except (ValueError, TypeError):
                return None  # an unusable answer makes no candidate (as DSPy)
            for name, text in advice.items():
                if name in state:
                    state[name]["instructions"] = state[name]["instructions"] + "\n\n" + text
            return state

        def make_and_score(plan: dict[str, Any]) -> tuple[State, list[float]] | None:
            state = make(plan)
            if state is None:
                return None
            found = rollouts(self._build(base, state), batch, self.metric, ctx)
            return state, [r["score"] for r in found]

        made = [
            m
            for m in parallel_map(
                make_and_score, plans, num_threads=max(1, len(plans)), cancel=ctx.cancel
            )
            if m is not None
        ]
        means = [_mean(s) for _, s in made]
        top = max(means) if means else 0.0
        return {
            "candidates": [c for c, _ in made],
            "scores": [s for _, s in made],
            "score": 100.0 * top,
            "progress": f"best of {len(made)} candidates {100 * top:.1f} on {len(batch)} examples",
        }

    def _evaluate_one(
        self, base: Module, state: State, examples: list[Example], ctx: RunContext
    ) -> dict[str, Any]:
        found = rollouts(self._build(base, state), examples, self.metric, ctx)
        scores = [r["score"] for r in found]
        return {"scores": scores, "score": 100.0 * _mean(scores)}

    # -- the plan -----------------------------------------------------------------------
    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        train = list(trainset)
        if len(train) < self.bsize:
            raise ValueError(f"SIMBA's trainset is too small: {len(train)} < bsize={self.bsize}")
        base = student.deepcopy()
        names = [n for n, _ in base.named_predictors()]
        if not names:
            raise ValueError("SIMBA needs a program with at least one predictor")
        count = self.num_candidates + 1
        projected = set(_picks(self.max_steps, count))  # winner positions, if none is missing
        final_scores: dict[int, list[float]] = {}  # program index -> trainset scores
        states: list[State] = [self._state(base)]
        scores: list[list[float]] = [[]]
        winners = [0]
        order = list(range(len(train)))
        step_rng(ctx.seed, "shuffle/0").shuffle(order)
        shuffles, position = 0, 0
        for k in range(self.max_steps):
            if position + self.bsize > len(train):
                shuffles += 1
                step_rng(ctx.seed, f"shuffle/{shuffles}").shuffle(order)
                position = 0
            batch = [train[i] for i in order[position : position + self.bsize]]
            position += self.bsize
            n = len(batch)

            rng = step_rng(ctx.seed, f"step{k}/sample")
            top = _top_k_plus_baseline(scores, self.num_candidates)
            chosen = [
                _softmax_sample(rng, top, scores, self.temperature_for_sampling)
                for _ in range(self.num_candidates * n)
            ]
            sample = Step(
                f"step{k}/sample", partial(self._sample, base, states, chosen, batch, ctx)
            )
            # The final evaluation's programs are, if every step has a winner, known in
            # advance: each is scored on the trainset beside the next step's sampling,
            # sharing its LM slots, instead of all at the end.
            early = [
                Step(
                    f"final/eval/{winners[j]}",
                    partial(self._evaluate_one, base, states[winners[j]], train, ctx),
                )
                for j in range(len(winners))
                if j in projected and winners[j] not in final_scores
            ]
            group: list[dict[str, Any]] = yield [sample, *early]
            sampled = group[0]
            for step, data in zip(early, group[1:], strict=True):
                final_scores[int(step.name.rsplit("/", 1)[1])] = data["scores"]
            outputs: list[Rollout] = sampled["outputs"]
            all_scores = [float(o["score"]) for o in outputs]
            p10, p90 = _percentile(all_scores, 10), _percentile(all_scores, 90)
            buckets = []
            for i in range(n):
                bucket = sorted(
                    [outputs[j] for j in range(i, len(outputs), n)],
                    key=lambda o: float(o["score"]),
                    reverse=True,
                )
                hi, lo = float(bucket[0]["score"]), float(bucket[-1]["score"])
                mean = _mean([float(o["score"]) for o in bucket])
                buckets.append((i, bucket, (hi - lo, hi, hi - mean)))
            buckets.sort(key=lambda b: b[2], reverse=True)

            rng = step_rng(ctx.seed, f"step{k}/candidates")
            plans: list[dict[str, Any]] = []
            for i, bucket, _stats in buckets:
                if len(plans) >= self.num_candidates + 1:
                    break  # as DSPy: up to num_candidates + 1 candidates per step
                src = _softmax_sample(
                    rng,
                    _top_k_plus_baseline(scores, self.num_candidates),
                    scores,
                    self.temperature_for_candidates,
                )
                source = self._drop_demos(states[src], rng)
                strategy = rng.choice(["demo", "rule"]) if self.max_demos > 0 else "rule"
                good, bad = bucket[0], bucket[-1]
                # A strategy whose trajectories do not stand out from the batch changes
                # nothing, and the source (its demos thinned) is still a candidate, as DSPy.
                if strategy == "demo" and float(good["score"]) > p10:
                    plans.append({"strategy": "demo", "source": source, "demos": self._demos(good)})
                elif (
                    strategy == "rule" and float(good["score"]) > p10 and float(bad["score"]) < p90
                ):
                    job = _rule_job(batch[i], good, bad, names, states[src])
                    plans.append({"strategy": "rule", "source": source, "rule": job})
                else:
                    plans.append({"strategy": "none", "source": source})
            made = yield Step(
                f"step{k}/candidates", partial(self._candidates, base, plans, batch, ctx)
            )
            candidates: list[State] = made["candidates"]
            if not candidates:
                continue
            means = [_mean(s) for s in made["scores"]]
            best = means.index(max(means))
            winners.append(len(states) + best)
            for state, cand_scores in zip(candidates, made["scores"], strict=True):
                states.append(state)
                scores.append([float(s) for s in cand_scores])

        m = len(winners) - 1
        finalists = [winners[i] for i in dict.fromkeys(_picks(m, count))]
        missing = [i for i in finalists if i not in final_scores]
        if missing:
            found: list[dict[str, Any]] = yield [
                Step(f"final/eval/{i}", partial(self._evaluate_one, base, states[i], train, ctx))
                for i in missing
            ]
            for i, data in zip(missing, found, strict=True):
                final_scores[i] = data["scores"]
        means = [_mean(final_scores[i]) for i in finalists]
        return self._build(base, states[finalists[means.index(max(means))]])

    def _drop_demos(self, state: State, rng: Any) -> State:
        """A copy of ``state`` with some demos dropped (the same positions from every
        predictor): a Poisson number with mean demos / max_demos, at least one when full."""
        out: State = json.loads(json.dumps(state))
        most = max((len(s["demos"]) for s in out.values()), default=0)
        cap = self.max_demos if self.max_demos > 0 else 3
        drop = min(max(_poisson(rng, most / cap), int(most >= cap)), most)
        gone = {rng.randrange(most) for _ in range(drop)} if most else set()
        for spec in out.values():
            spec["demos"] = [d for i, d in enumerate(spec["demos"]) if i not in gone]
        return out

    def _demos(self, good: Rollout) -> dict[str, dict[str, Any]]:
        """The best trajectory's last call per predictor, as a demo (long inputs cut)."""
        cut = self.demo_input_field_maxlen
        demos: dict[str, dict[str, Any]] = {}
        for call in good["trace"]:
            inputs = {
                k: (
                    f"{str(v)[:cut]}\n\t\t... <TRUNCATED FOR BREVITY>"
                    if cut and len(str(v)) > cut
                    else v
                )
                for k, v in call["inputs"].items()
            }
            demos[call["predictor"]] = {"augmented": True, **inputs, **call["outputs"]}
        return demos


def _rule_job(
    example: Example, good: Rollout, bad: Rollout, names: list[str], state: State
) -> dict[str, Any]:
    def trajectory(r: Rollout) -> list[dict[str, Any]]:
        return [
            {"module_name": c["predictor"], "inputs": c["inputs"], "outputs": c["outputs"]}
            for c in r["trace"]
        ]

    def info(r: Rollout) -> dict[str, Any]:
        return {} if r["feedback"] is None else {"feedback": r["feedback"]}

    return {
        "program_code": "",
        "modules_defn": "\n".join(
            f"Module {n}\n  Instructions: {state[n]['instructions']}" for n in names
        ),
        "program_inputs": {str(k): v for k, v in example.inputs().to_dict().items()},
        "oracle_metadata": {str(k): v for k, v in example.labels().to_dict().items()},
        "better_program_trajectory": trajectory(good),
        "better_program_outputs": good["outputs"],
        "better_reward_value": good["score"],
        "better_reward_info": info(good),
        "worse_program_trajectory": trajectory(bad),
        "worse_program_outputs": bad["outputs"],
        "worse_reward_value": bad["score"],
        "worse_reward_info": info(bad),
        "module_names": names,
    }


def _picks(winners_after_baseline: int, count: int) -> list[int]:
    """Positions of the winners scored at the end: ``count`` evenly spaced over the steps'
    winners, the baseline (position 0) first, as DSPy."""
    m = winners_after_baseline
    return [0] * count if m < 1 else [round(i * m / (count - 1)) for i in range(count)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _top_k_plus_baseline(scores: list[list[float]], k: int) -> list[int]:
    ranked = sorted(range(len(scores)), key=lambda i: _mean(scores[i]), reverse=True)[:k]
    if 0 not in ranked and ranked:
        ranked[-1] = 0
    return list(dict.fromkeys(ranked))


def _softmax_sample(rng: Any, idxs: list[int], scores: list[list[float]], temp: float) -> int:
    weights = [math.exp(_mean(scores[i]) / temp) for i in idxs]
    total = sum(weights)
    if total <= 0 or not math.isfinite(total):
        return int(rng.choice(idxs))
    return int(rng.choices(idxs, weights=weights, k=1)[0])


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _poisson(rng: Any, mean: float) -> int:
    """A Poisson draw (Knuth's method; the means here are small)."""
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
