"""The release gate: does the edited model say its new facts, and keep everything else?

* :mod:`~validation.gate.metrics` -- ``run_gate``: the probes of a batch through both models, the metrics;
* :mod:`~validation.gate.probes` -- paraphrase catalogue, neighbours, subject probes, protected facts, fluency
  text, and the keep prompts handed to the editor;
* :mod:`~validation.gate.policy` -- the thresholds (YAML);
* :mod:`~validation.gate.measures` -- greedy answers, entropy, perplexity, norms;
* :mod:`~validation.gate.answers` -- when an answer says a target;
* :mod:`~validation.gate.blame` -- which requests a failed metric points at;
* :mod:`~validation.gate.report` -- JSON, Markdown, HTML;
* :mod:`~validation.gate.bisect` -- the largest passing subset of a failing batch.
"""
