"""llm-compressor's log lines in library use: on stderr, from WARNING up, unless the caller chose otherwise.

llm-compressor configures loguru when it is imported: it removes every loguru sink (the caller's too) and
logs INFO and its METRIC lines to stdout, which is the caller's output. When quantkit's library API is
the first to import it, `route_llmcompressor_logs` imports it with its own configuration disabled, so the
caller's loguru sinks stay as they are, and sends llm-compressor's records from WARNING up to stderr
(loguru's default sink, which would print its DEBUG lines, is removed as llm-compressor itself does).

The caller's choice wins, and nothing is changed behind its back:
  * any LLM_COMPRESSOR_LOG_* variable set: llm-compressor reads it at import and configures itself;
  * llm-compressor already imported (by the caller, or by the CLI, which routes it to stderr itself):
    its configuration is left as it is.
"""

from __future__ import annotations

import os
import sys
import threading

_lock = threading.Lock()
_done = False
LEVEL = "WARNING"
METRIC_LEVEL_NO = 38  # llm-compressor's own number for its METRIC level


def route_llmcompressor_logs() -> None:
    """Import llm-compressor with its log lines on stderr from WARNING up (see the module's docstring for
    when the caller's configuration is kept instead). Idempotent; cheap once llm-compressor is imported."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        if "llmcompressor" in sys.modules or any(k.startswith("LLM_COMPRESSOR_LOG") for k in os.environ):
            return  # the caller's (or llm-compressor's) own configuration
        os.environ["LLM_COMPRESSOR_LOG_DISABLED"] = "true"  # its import then leaves loguru's sinks alone
        try:
            import llmcompressor  # noqa: F401 - configures its logger at import
            from llmcompressor.logger import support_log_once
        finally:
            del os.environ["LLM_COMPRESSOR_LOG_DISABLED"]
        from loguru import logger

        logger.enable("llmcompressor")
        try:
            logger.level("METRIC")
        except ValueError:  # registered by llm-compressor's configure_logger, which returned early
            logger.level("METRIC", no=METRIC_LEVEL_NO)
        try:
            logger.remove(0)  # loguru's default stderr sink at DEBUG, if the caller kept it
        except ValueError:
            pass
        logger.add(sys.stderr, level=LEVEL, format="{time:HH:mm:ss} | llmcompressor | {level} - {message}",
                   filter=lambda record: record["name"].startswith("llmcompressor") and support_log_once(record))
