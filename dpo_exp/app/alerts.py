"""Messages for the page: a `gr.Error` shows its text in the browser and is one line in the app's terminal."""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger("dpo_exp.app")


def page_error(message: str) -> gr.Error:
    """A gr.Error to raise from an event handler: the page shows `message`; the terminal gets it as one log line
    instead of the traceback gradio prints for every gr.Error by default (`print_exception`)."""
    log.warning("shown in the page: %s", message)
    return gr.Error(message, print_exception=False)
