"""Judged before/after comparisons: did the model's own answers get better?

`--judge SPEC` on a training run (or `aitraining llm --compare DIR_A DIR_B --judge SPEC`) has two models answer the
same prompts greedily and a judge compare each pair of answers, in both orders. The modules, from the bottom:

- `stats`: pure functions of the verdicts (win / tie / loss rates and their intervals, position consistency, the
  length-controlled win rate); standard library only.
- `spec`: what `--judge` names (a local model folder or hub id, or an OpenAI-compatible URL), the judge prompt and
  its file, the API key from the environment, and the checks made before anything is trained. No torch.
- `local`: a causal LM judge read from its next-token log-probs, and a reward-model judge.
- `chat`: a judge behind an OpenAI-compatible chat-completions URL (urllib).
- `session`: the judging itself: the cost said up front, the progress, each verdict kept as it comes, the summary
  in judge.json and metrics.jsonl (`eval_judge_*`), the model card's section.
- `before_after`: the prompts a training run answers before and after training (the sample answers' and the
  judge's), through the sample answers' one generate loop (autotrain.answers).
- `compare`: `aitraining llm --compare` and `aitraining llm --judge --project-name DIR` (finish a run's judging).
"""
