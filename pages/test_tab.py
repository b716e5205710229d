"""The Test tab: the base model and an adapter answer the same input with the same seed, side by side.

One ``AdapterTester`` per user and base model is kept in memory; loading
another adapter on the same base adds it, and the dropdown switches between them.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from pages import common
from pages.i18n import PageError, lang_of, t, tr
from pages.training import check_model_choice
from peft_core.compare import AdapterTester
from peft_core.run_config import RunConfig

_testers: dict[tuple[str, str, str], AdapterTester] = {}  # (owner, base, task) -> tester


def finished_runs(owner: str) -> list[tuple[str, str]]:
    return [(f"{s.job_id} · {s.task} · {s.state}", s.run_dir) for s in common.runner().list_runs(owner)
            if s.state in ("ok", "stopped") and _has_adapter(s.run_dir)]


def _has_adapter(run_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(run_dir, *parts)) for parts in
               (("adapter_config.json",), ("unet", "adapter_config.json")))


def load(owner: str, run_dir: str | None, typed: str, base: str, task: str) -> tuple[AdapterTester, str]:
    """The tester with the chosen adapter loaded (and active); returns it and the adapter's name."""
    if run_dir:
        if run_dir not in {path for _, path in finished_runs(owner)}:
            raise PageError("error.not_your_run")
        config = RunConfig.from_yaml(os.path.join(run_dir, "config.yaml"))
        base, task, source = config.model.name_or_path, config.task, run_dir
    else:
        source = (typed or "").strip()
        if not source or not base or not task:
            raise PageError("error.choose_adapter")
        if not common.settings().single_user and os.path.exists(source):
            raise PageError("error.shared_adapter")
        base = check_model_choice(base)
    key = (owner, base, task)
    tester = _testers.get(key)
    if tester is None:
        for other in [k for k in _testers if k[0] == owner]:  # one base in memory per user
            del _testers[other]
        tester = _testers[key] = AdapterTester(base, task)
    name = tester.load_adapter(source)
    tester.set_adapter(name)
    return tester, name


def tester_for(owner: str) -> AdapterTester:
    for (who, _, _), tester in _testers.items():
        if who == owner:
            return tester
    raise PageError("error.load_first")


def describe(output: Any) -> tuple[str | None, list | None]:
    """(text, images) for showing one side's answer."""
    if isinstance(output, str):
        return output if output.strip() else "(nothing: the model ended its answer at once)", None
    if isinstance(output, list) and output and hasattr(output[0], "save"):
        return None, output
    if isinstance(output, list):
        lines = []
        for item in output:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], float):
                lines.append(f"{item[0]}: {item[1]:.3f}")
            elif isinstance(item, tuple):
                lines.append(f"{item[0]} → {item[1]}")
            else:
                lines.append(str(item))
        return "\n".join(lines), None
    return str(output), None


def build(owner_state: gr.State) -> None:
    with gr.Tab(tr("tab.test"), elem_id="tab-test"):
        gr.Markdown(tr("test.intro"))
        with gr.Row():
            run = gr.Dropdown(label=tr("test.run"), choices=[], scale=4)
            refresh = gr.Button(tr("test.refresh"), size="sm", scale=1)
        with gr.Accordion(tr("test.or_adapter"), open=False), gr.Row():
            typed = gr.Textbox(label=tr("test.adapter"), placeholder="user/my-adapter")
            base = gr.Textbox(label=tr("test.base"))
            task = gr.Dropdown(choices=["causal_lm", "seq2seq", "seq_cls", "token_cls", "image_cls", "dreambooth"],
                               value="causal_lm", label=tr("train.task"))
        with gr.Row():
            load_button = gr.Button(tr("test.load"), variant="primary")
            active = gr.Dropdown(label=tr("test.active"), choices=[], interactive=True)
        status = gr.Markdown()
        with gr.Row():
            text_in = gr.Textbox(label=tr("test.input"), lines=3, scale=4)
            image_in = gr.Image(label=tr("test.image"), type="pil", scale=2, visible=False)
            seed = gr.Number(value=0, precision=0, label=tr("test.seed"), scale=1)
        compare = gr.Button(tr("test.compare"))
        with gr.Row():
            with gr.Column():
                base_text = gr.Textbox(label=tr("test.base_side"), lines=6)
                base_images = gr.Gallery(label=tr("test.base_side"), columns=2, height=220, visible=False)
            with gr.Column():
                adapted_text = gr.Textbox(label=tr("test.adapted_side"), lines=6)
                adapted_images = gr.Gallery(label=tr("test.adapted_side"), columns=2, height=220, visible=False)

        refresh.click(lambda token: gr.Dropdown(choices=finished_runs(common.owner_of(token))), owner_state, run,
                      api_name=False)

        def do_load(token, run_dir, typed_, base_, task_, request: gr.Request = None):
            lang = lang_of(request)
            try:
                tester, name = load(common.owner_of(token), run_dir, typed_, base_, task_)
            except (ValueError, OSError) as exc:
                raise gr.Error(common.message(exc, lang)) from None
            notes = "".join(f"\n- {n}" for n in tester.notes)
            images, pictures = tester.task == "image_cls", tester.task == "dreambooth"
            return (gr.Dropdown(choices=tester.adapters, value=name), t("test.loaded", lang, name=name, base=tester.base) + notes,
                    gr.update(visible=images), gr.update(visible=not pictures), gr.update(visible=not pictures),
                    gr.update(visible=pictures), gr.update(visible=pictures))

        def do_switch(token, name):
            if name:
                tester_for(common.owner_of(token)).set_adapter(name)

        def do_compare(token, text, image, seed_, request: gr.Request = None):
            lang = lang_of(request)
            try:
                tester = tester_for(common.owner_of(token))
                inputs = image if tester.task == "image_cls" else text
                if inputs is None or (isinstance(inputs, str) and not inputs.strip()):
                    raise PageError("error.image_input" if tester.task == "image_cls" else "error.text_input")
                result = tester.compare(inputs, seed=int(seed_ or 0))
            except (ValueError, OSError) as exc:
                raise gr.Error(common.message(exc, lang)) from None
            (bt, bi), (at, ai) = describe(result.base), describe(result.adapted)
            return bt, bi, at, ai

        load_button.click(do_load, [owner_state, run, typed, base, task],
                          [active, status, image_in, base_text, adapted_text, base_images, adapted_images],
                          api_name="load_adapter")
        active.change(do_switch, [owner_state, active], None, api_name=False)
        compare.click(do_compare, [owner_state, text_in, image_in, seed],
                      [base_text, base_images, adapted_text, adapted_images], api_name="compare")
