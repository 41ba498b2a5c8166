"""RQ's job webhooks and callbacks, off in the runner's processes that look at RQ without running jobs.

RQ 3 sends a job's `webhooks` (HTTP requests to URLs the job names: rq/webhook.py Webhook.send)
and calls its failure callback (a function the job names, imported by name) when its registry
cleanup finds the job abandoned (rq/registry.py StartedJobRegistry.cleanup). That cleanup runs
outside the workers too, with RQ's plain Job: RQ's CLI (`rq info` cleans every queue's registries
first, rq/cli/cli.py info) and rq-dashboard before 0.9 (it counted and listed registries with
cleanup). Whoever can write to Redis could then make the host of the dashboard, or of an
operator's `rq info`, send HTTP requests anywhere, or import and call a function. The runner's
workers never do (worker.jobguard.RunnerJob). `disable_job_hooks()`, called once before such a
process touches RQ, makes RQ's Job in that process behave alike: a job's webhooks are logged,
never sent; its callbacks are never imported nor called. `llm-runner dashboard` calls it; a
settings module for RQ's CLI (`rq info -c <module>`) calls it at import.
"""

from __future__ import annotations

from rq.job import Job

from worker.jobguard import RunnerJob

# RQ's Job members that send a webhook or import a callback, each replaced in place by RunnerJob's
# own: Job.send_webhooks, Job.success_callback, Job.failure_callback, Job.stopped_callback.
HOOKS = ("send_webhooks", "success_callback", "failure_callback", "stopped_callback")


def disable_job_hooks() -> None:
    """Make RQ's Job, in this process, send no webhook and call no callback (safe to call twice)."""
    for name in HOOKS:
        setattr(Job, name, RunnerJob.__dict__[name])
