"""Pipelines the benchmarks run, generated as YAML text: a sequential chain, a wide fan-out, and a realistic
~200-line pipeline for `validate`. The scripted fixtures that answer them are built here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_HEADER = """flowctl: 1
name: {name}
models:
  default: {model}
agents:
  echo: {{instruction: You repeat what you are given.}}
"""


SCRIPTED_MODEL = "{provider: scripted, model: bench-model}"


def chain_yaml(steps: int, timeout: str | None = None, model: str = SCRIPTED_MODEL) -> str:
    """`steps` agent steps in sequence; each prompt reads the previous step's output, with text around it (as prompts
    have; a bare `{{ x }}` would flatter the render). `timeout`: a default
    per-attempt step timeout (the floor baseline has a timeout scope per step too). `model`: the default model's
    definition (flow-style YAML)."""
    lines = [_HEADER.format(name="bench-chain", model=model).rstrip("\n")]
    if timeout is not None:
        lines += ["defaults:", f"  timeout: {timeout}"]
    lines += ["steps:", '  - {id: s0, agent: echo, prompt: "start"}']
    prompt = "Go on from this: {{{{ steps.s{previous}.output }}}}. Step {step}, keep it short."
    lines += [
        f'  - {{id: s{i}, agent: echo, prompt: "{prompt.format(previous=i - 1, step=i)}"}}' for i in range(1, steps)
    ]
    lines += ["outputs:", f'  last: "{{{{ steps.s{steps - 1}.output }}}}"']
    return "\n".join(lines) + "\n"


def fanout_yaml(concurrency: int, model: str = SCRIPTED_MODEL) -> str:
    """One agent step fanned out over the `items` input; no per-step cap, the run-wide cap is `concurrency`."""
    return (
        _HEADER.format(name="bench-fanout", model=model)
        + f"""concurrency: {concurrency}
inputs:
  items: {{type: array}}
steps:
  - id: fan
    agent: echo
    for_each: "{{{{ inputs.items }}}}"
    as: item
    prompt: "item {{{{ item }}}}"
"""
    )


def zero_latency_fixture() -> dict[str, Any]:
    """Every model call answers at once (the scripted provider does not even yield)."""
    return {"default": "ok"}


def latency_fixture(latency: float) -> dict[str, Any]:
    """Every model call answers after `latency` seconds of simulated provider time."""
    return {"default": {"content": "ok", "latency": latency}}


# A realistic pipeline for `flowctl validate`: most step kinds, templates, state, triggers and finally.
VALIDATE_YAML = """\
# yaml-language-server: $schema=./pipeline.schema.json
flowctl: 1
name: support-triage
description: Triage a batch of support tickets, research them, draft answers and review the drafts.

inputs:
  tickets:
    type: array
    description: The tickets to triage.
    items: {type: object}
  product: {type: string, default: flowctl}
  max_drafts: {type: integer, default: 5, minimum: 1, maximum: 50}
  tone: {type: string, enum: [formal, friendly], default: friendly}

models:
  default: {provider: openai, model: gpt-4o-mini, temperature: 0.2, timeout: 30s}
  strong:
    provider: openai
    model: gpt-4o
    max_tokens: 2000
    circuit_breaker: {failure_threshold: 3, reset_after: 30s}
    price: {input_per_mtok: 2.5, output_per_mtok: 10}

servers:
  time: {command: uvx, args: [mcp-server-time], read_timeout_seconds: 10}
  docs:
    url: "https://docs.example.com/mcp"
    headers: {Authorization: "Bearer ${DOCS_TOKEN}"}
    allowed_tools: [search, read_page]

agents:
  classifier:
    instruction: "You classify support tickets for {{ inputs.product }}."
    output_schema:
      type: object
      required: [category, urgency]
      properties:
        category: {type: string, enum: [bug, billing, question, feature]}
        urgency: {type: integer, minimum: 1, maximum: 5}
  researcher:
    instruction: You research a ticket in the documentation and cite pages.
    servers: [docs, time]
    max_iterations: 6
  writer:
    instruction: "You write {{ inputs.tone }} answers to support tickets."
    model: strong
  reviewer:
    instruction: You review a drafted answer and score it from 1 to 10.
    output_schema:
      type: object
      required: [score]
      properties:
        score: {type: integer}
        notes: {type: string}
  router:
    instruction: You pick how much work a ticket batch needs.

state:
  log: {reducer: append}
  stats: {reducer: merge}
  drafted: {default: 0}

defaults:
  retry: {max_attempts: 3, backoff: exponential, initial_delay: 1s, max_delay: 20s}
  timeout: 2m

steps:
  - id: now
    tool: time.get_current_time
    args: {timezone: UTC}

  - id: classify
    agent: classifier
    for_each: "{{ inputs.tickets }}"
    as: ticket
    prompt: "Classify this ticket: {{ ticket.subject }} / {{ ticket.body }}"
    max_concurrency: 8
    join: collect
    set:
      log: "classified {{ inputs.tickets | length }} tickets"

  - id: plan
    route:
      rules:
        - {when: "inputs.tickets | length < 3", choose: quick}
      agent: router
      prompt: "How much work do these {{ inputs.tickets | length }} tickets need?"
      default: thorough
      on_unknown: default
    branches:
      quick:
        - {id: quick_note, set: {stats: {mode: quick}}}
      thorough:
        - id: research
          agent: researcher
          prompt: "Research: {{ steps.classify.output | tojson }}"
          timeout: 5m
          fallback: {value: "no research"}
        - id: research_note
          set: {stats: {mode: thorough}}

  - id: drafts
    pipeline: draft_one
    for_each: "{{ inputs.tickets[:inputs.max_drafts] }}"
    as: ticket
    inputs:
      ticket: "{{ ticket }}"
      context: "{{ steps.plan.output.results | tojson }}"
    max_concurrency: 4
    join: collect
    on_error: continue
    default: []

  - id: checks
    needs: [drafts]
    parallel:
      - id: tone_check
        agent: reviewer
        prompt: "Check the tone of: {{ steps.drafts.output | tojson }}"
      - id: fact_check
        agent: reviewer
        prompt: "Check the facts of: {{ steps.drafts.output | tojson }}"
        retry: {max_attempts: 2}
    join: all

  - id: count
    needs: [checks]
    set:
      drafted: "{{ steps.drafts.output | length }}"
      log: "drafted {{ steps.drafts.output | length }} answers"

  - id: announce
    needs: [count]
    when: "state.drafted > 0"
    emit: {event: drafted, data: {count: "{{ state.drafted }}"}}

  - id: approval
    needs: [count]
    description: Waits for the announcement (or `flowctl signal RUN_ID drafted` from outside).
    wait:
      event: drafted
      timeout: 1h
      match: "event.data.count >= 0"
    on_error: continue
    default: {approved: false}

  - id: stamp
    needs: [approval]
    tool: time.convert_time
    args:
      source_timezone: UTC
      time: "{{ steps.now.output.datetime[11:16] }}"
      target_timezone: Europe/Paris
    retry: {max_attempts: 5, backoff: fixed, initial_delay: 500ms}

pipelines:
  draft_one:
    description: Draft and refine one answer.
    inputs:
      ticket: {type: object}
      context: {type: string, default: ""}
      tone: {type: string, enum: [formal, friendly], default: friendly}
    outputs:
      answer: "{{ steps.refine.output.draft }}"
    steps:
      - id: refine
        loop:
          max_iterations: 3
          until: "steps.judge.output.score >= 8"
          steps:
            - id: draft
              agent: writer
              prompt: |
                Ticket: {{ inputs.ticket.subject }}
                {{ inputs.ticket.body }}
                Context: {{ inputs.context }}
                Previous draft: {{ loop.previous.draft | default('none') }}
            - id: judge
              agent: reviewer
              prompt: "Score this answer: {{ steps.draft.output }}"

triggers:
  - id: on_drafted
    event: drafted
    steps:
      - {id: drafted_note, set: {log: "event drafted with {{ event.data.count }} answers"}}
  - id: busy
    when: "state.drafted > 20"
    steps:
      - {id: busy_note, set: {stats: {busy: true}}}
  - id: recover_drafts
    failed: drafts
    steps:
      - {id: drafts_failed_note, set: {log: "drafting failed: {{ event.error.message }}"}}

finally:
  - id: summary
    set:
      log: "run {{ run.id }} finished with status {{ run.status }}"

outputs:
  categories: "{{ steps.classify.output }}"
  drafts: "{{ steps.drafts.output }}"
  checks: "{{ steps.checks.output }}"
  log: "{{ state.log }}"
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path
