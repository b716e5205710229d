"""The "Adapter planner" tab: pick a model and a method, see what would train.

It builds the model without weights, so it answers in seconds even for
models far larger than this machine could train.
"""

from __future__ import annotations

import json

import gradio as gr

from pages.forms import form_fields, to_settings, widget
from peft_core import list_methods
from peft_core.planning import AdapterPlan, plan_adapter
from peft_core.presets import DEFAULT_LLM, PRESETS

TASKS = ["CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "IMAGE_CLS"]


def describe(plan: AdapterPlan) -> str:
    """Markdown summary of a plan."""
    shown = ", ".join(f"`{m}`" for m in plan.wrapped_modules[:8])
    more = f" and {len(plan.wrapped_modules) - 8} more" if len(plan.wrapped_modules) > 8 else ""
    return (
        f"### {plan.method} on {plan.architecture}\n"
        f"trainable params: **{plan.trainable_params:,d}** || all params: {plan.total_params:,d} || "
        f"trainable%: **{plan.trainable_percent:.4f}**\n\n"
        f"Adapts {len(plan.wrapped_modules)} modules: {shown}{more}."
    )


def run_plan(model: str, task: str, method: str, *values) -> tuple[str, str]:
    """Handler: returns (summary markdown, adapter_config.json text); errors shown in the page."""
    spec = next(s for s in list_methods() if s.name == method)
    try:
        settings = to_settings(form_fields(spec.config_cls), list(values))
        plan = plan_adapter(model, method, settings, task)
    except (ValueError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    return describe(plan), json.dumps(plan.adapter_config, indent=2)


def build() -> None:
    """Add the tab's widgets to the current Blocks."""
    with gr.Tab("Adapter planner"):
        gr.Markdown(
            "Pick a model and a PEFT method; see which modules the adapter wraps and how many "
            "parameters train, before downloading or loading any weights."
        )
        with gr.Row():
            model = gr.Dropdown(
                choices=list(PRESETS), value=DEFAULT_LLM, allow_custom_value=True, label="Model",
                info="A preset that works offline, or any Hub id or local path.",
            )
            task = gr.Dropdown(choices=TASKS, value="CAUSAL_LM", label="Task")
            method = gr.Dropdown(
                choices=[(s.title, s.name) for s in list_methods()], value="lora", label="Method",
                info="Only methods that fit the task are offered.",
            )
        task.change(
            lambda t: gr.Dropdown(choices=[(s.title, s.name) for s in list_methods(t)]), task, method
        )

        @gr.render(inputs=method)
        def method_form(method_name: str) -> None:
            spec = next(s for s in list_methods() if s.name == method_name)
            fields = form_fields(spec.config_cls)
            widgets = []
            for start in range(0, len(fields), 3):
                with gr.Row():
                    widgets += [widget(f) for f in fields[start : start + 3]]
            button = gr.Button("Plan adapter", variant="primary")
            summary = gr.Markdown()
            config_json = gr.Code(language="json", label="adapter_config.json")
            button.click(run_plan, [model, task, method, *widgets], [summary, config_json], api_name="plan_adapter")
