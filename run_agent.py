#!/usr/bin/env python
"""Run the voice agent: in the browser (webrtc), on this machine's audio (local), or on WAV files (file)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["webrtc", "local", "file"], default="webrtc")
    parser.add_argument(
        "--check",
        action="store_true",
        help="load every model of the config, ask one spoken question through the pipeline, "
        "print each stage's time, and exit 0 if it all worked (1 if not)",
    )
    parser.add_argument(
        "--config", default="default", help="a config name in configs/ or a YAML path"
    )
    _add_server_options(parser)
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        help="file: a WAV of one user turn; repeat for more turns",
    )
    parser.add_argument("--output", help="file: WAV to write the bot's replies to")
    parser.add_argument(
        "--max-input-secs",
        type=float,
        default=600.0,
        help="file: refuse an input longer than this (it is played in real time; default 600)",
    )
    parser.add_argument("--log", help="file: JSON log to write (default: OUTPUT with .json)")
    parser.add_argument("--input-device", help="local: sounddevice input device (name or index)")
    parser.add_argument("--output-device", help="local: sounddevice output device (name or index)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log DEBUG lines too (by default INFO and above: a line per session and per turn, "
        "warnings and errors; --check only warnings, then its report)",
    )
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="let a GPU voice (e.g. configs/miso-8b.yaml) run on the CPU when there is no CUDA",
    )
    args = parser.parse_args(argv)
    if args.transport == "file":
        if not args.input or not args.output:
            parser.error("--transport file needs at least one --input WAV and an --output WAV")
        check_file_outputs(parser, args)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.self_signed and args.tls_cert:
        parser.error("--self-signed or --tls-cert/--tls-key, not both")
    args.error = parser.error
    return args


def _add_server_options(parser) -> None:
    """The webrtc transport's options: where it listens, who may call, TLS."""
    parser.add_argument(
        "--host", help="webrtc: address to bind (default from the config, 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, help="webrtc: port (default from the config, 7860)")
    parser.add_argument(
        "--max-sessions",
        type=int,
        help="webrtc: calls at once, browser and phone together (default from the config, 2)",
    )
    parser.add_argument(
        "--public-host",
        help="webrtc: the host name a phone provider reaches this server by (e.g. an ngrok "
        "tunnel's), for the stream URL the TwiML webhook (POST /) answers",
    )
    parser.add_argument(
        "--token",
        help="webrtc: the access token every request needs (default: a new one when --host "
        "is not loopback; also VOICE_AGENT_TOKEN)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="webrtc: serve a non-loopback --host without an access token (anyone who can "
        "reach it can talk to the bot)",
    )
    parser.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="webrtc: serve from a Ray cluster: ADDRESS of a running one (ray start), 'auto', "
        "or local:N to start N nodes on this machine; each node loads the models and holds "
        "the calls placed on it (./setup.sh --cluster installs Ray)",
    )
    parser.add_argument("--tls-cert", help="webrtc: serve HTTPS with this PEM certificate")
    parser.add_argument("--tls-key", help="webrtc: the certificate's PEM private key")
    parser.add_argument(
        "--self-signed",
        action="store_true",
        help="webrtc: serve HTTPS with a self-signed certificate, made once and kept in the "
        "cache (browsers warn once; its fingerprint is printed to compare)",
    )
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="webrtc: serve plain HTTP on a non-loopback --host (behind a TLS proxy)",
    )


def check_file_outputs(parser, args):
    """File mode writes two files, the replies' WAV and the log: neither may be an input
    or the other, and both must be writable, before any model loads."""
    output = Path(args.output)
    if output.suffix.lower() != ".wav":
        parser.error(f"--output {output} is where the replies' WAV goes: give a .wav path")
    args.log = args.log or str(output.with_suffix(".json"))
    log = Path(args.log)
    inputs = {Path(p).resolve() for p in args.input}
    if log.resolve() == output.resolve():
        parser.error(f"--log {log} is the --output WAV: give another path")
    for name, path in (("--output", output), ("--log", log)):
        if path.resolve() in inputs:
            parser.error(f"{name} {path} is one of the inputs: it would be overwritten")
        if path.is_dir():
            parser.error(f"{name} {path} is a folder")
        # Tried, not predicted (permission bits say little to root, or on a read-only mount).
        existed = path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab"):
                pass
            if not existed:
                path.unlink()
        except OSError as e:
            parser.error(f"{name} {path} cannot be written: {e.strerror or e}")


def check_exposure(args, host: str):
    """A server bound beyond loopback needs an access token and HTTPS, or says it does not."""
    from pipelines.serve.access import is_loopback

    if is_loopback(host):
        return
    if not (args.tls_cert or args.self_signed or args.no_tls):
        args.error(
            f"--host {host} reaches beyond this machine, and browsers give a page the "
            "microphone only on localhost or over HTTPS: pass --tls-cert/--tls-key or "
            "--self-signed (or --no-tls behind a TLS proxy)"
        )


class CtrlCWhileStarting:
    """Ctrl-C while the agent starts (imports, config, loading models) is remembered and
    acted on once it has started (a few seconds), instead of being raised where it lands:
    inside a library's callback (llama.cpp logs through one while loading) or a library's
    import-time try/except, Python prints a traceback and drops it, and the agent would
    start anyway."""

    def __init__(self):
        import signal

        self._signal = signal
        self.pressed = False
        self._previous = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_ctrl_c(self, signum, frame):
        self.pressed = True

    def started(self) -> None:
        """Back to the usual Ctrl-C; raise KeyboardInterrupt if it was pressed meanwhile."""
        self._signal.signal(self._signal.SIGINT, self._previous)
        if self.pressed:
            raise KeyboardInterrupt


def configure_logging(args) -> None:
    """Quiet by default: INFO and above, one short line each; -v gives DEBUG with where
    each line comes from. --check prints its own report, so only warnings before it."""
    from loguru import logger

    logger.remove()
    if args.verbose:
        logger.add(sys.stderr, level="DEBUG")
    else:
        level = "WARNING" if args.check else "INFO"
        logger.add(sys.stderr, level=level, format="{time:HH:mm:ss} {level: <7} {message}")


def main(argv=None) -> int:
    args = parse_args(argv)
    starting = CtrlCWhileStarting()
    configure_logging(args)
    from agent.audio import WavInputError, load_input_wav
    from agent.config import ConfigError, load_config
    from agent.models import ModelNotFoundError
    from tts.base import EngineUnavailableError

    try:
        config = load_config(args.config)
        if args.allow_cpu and config.tts.miso is not None:
            config.tts.miso.allow_cpu = True
        if args.public_host:
            config.server.public_host = args.public_host
        if args.max_sessions is not None:
            if args.max_sessions < 1:
                raise ConfigError("--max-sessions must be 1 or more")
            config.server.max_sessions = args.max_sessions
        if args.transport == "webrtc" and not args.check:
            check_exposure(args, args.host or config.server.host)
            from pipelines.serve.telephony import check_phone_providers

            check_phone_providers(config.server.phone_providers)
        if args.transport == "file":
            for path in args.input:  # fail on a bad input before loading any model
                samples, _ = load_input_wav(path, config.audio_in_sample_rate)
                secs = len(samples) / config.audio_in_sample_rate
                if secs > args.max_input_secs:
                    raise WavInputError(
                        f"{path} is {secs:.0f} s long, over --max-input-secs "
                        f"{args.max_input_secs:g} (each input is played in real time)"
                    )
        if args.cluster and args.transport == "webrtc" and not args.check:
            # The nodes load the models; this process is the front door only.
            return _run_webrtc(None, args, starting, config)
        from pipelines.stack import load_stack

        stack = load_stack(config)
    except (ConfigError, ModelNotFoundError, WavInputError) as e:
        starting.started()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except EngineUnavailableError as e:
        # No CUDA, a checkpoint that does not load, a codec or tokenizer not found.
        starting.started()
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.transport == "webrtc" and not args.check:
        return _run_webrtc(stack, args, starting)
    # Each run below takes Ctrl-C from here on (asyncio's handler, or file mode's own).
    starting.started()
    if args.check:
        return asyncio.run(_run_check(stack))
    if args.transport == "file":
        return asyncio.run(_run_file(stack, args))
    return asyncio.run(_run_local(stack, args))


async def _run_check(stack) -> int:
    from pipelines.local.install_check import report, run_check

    result = await run_check(stack)
    print(report(result, stack.load_secs))
    return 0 if result.ok else 1


async def _run_file(stack, args) -> int:
    import signal

    from pipelines.local.file_mode import FileTurn, run_files

    output, log = Path(args.output), Path(args.log)
    count = len(args.input)
    print(f"{count} turn(s), each played in real time; replies go to {output}", file=sys.stderr)

    def on_turn(index: int, turn: dict):
        # One line per answered turn, as it is done (and already on disk).
        print(f"turn {index + 1}/{count} done", file=sys.stderr)
        print(json.dumps({k: turn[k] for k in ("input", "transcript", "reply", "latency_secs")}))

    # Ctrl-C ends the run after the turn being answered, keeping what was answered; a
    # second one stops at once.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_ctrl_c():
        loop.remove_signal_handler(signal.SIGINT)
        print("stopping after this turn (Ctrl-C again to stop now)", file=sys.stderr)
        stop.set()

    loop.add_signal_handler(signal.SIGINT, on_ctrl_c)
    result = await run_files(
        stack,
        [FileTurn(Path(p)) for p in args.input],
        output_path=output,
        log_path=log,
        on_turn=on_turn,
        should_stop=stop.is_set,
    )
    print(f"bot audio: {output}\nlog: {log}")
    if stop.is_set():
        print(f"interrupted: {len(result.turns)} of {count} turn(s) answered", file=sys.stderr)
        return 130
    return 0


async def _run_local(stack, args) -> int:
    from pipecat.transports.base_transport import TransportParams
    from pipecat.workers.runner import WorkerRunner

    from pipelines.build import build_session
    from pipelines.local.sounddevice_transport import SoundDeviceTransport

    def device(value):
        return int(value) if value and value.isdigit() else value

    config = stack.config
    transport = SoundDeviceTransport(
        TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=config.audio_in_sample_rate,
            audio_out_sample_rate=config.audio_out_sample_rate,
        ),
        input_device=device(args.input_device),
        output_device=device(args.output_device),
    )
    session = build_session(stack, transport, session_id="local")
    print("Listening. Speak, then pause; Ctrl-C to stop.")
    runner = WorkerRunner()
    await runner.add_workers(session.worker)
    await runner.run()
    return 0


def _run_webrtc(stack, args, starting: CtrlCWhileStarting, config=None) -> int:
    """Serve the page, the offers and the phone webhooks: from this process's models
    (``stack``), or with ``--cluster`` from a Ray cluster's nodes (``config``)."""
    import os
    import secrets
    import socket

    from agent.models import cache_dir
    from pipelines.serve.access import certificate_fingerprint, is_loopback, self_signed_certificate
    from pipelines.serve.uvicorn_server import AgentServer, free_port, uvicorn_config

    config = config or stack.config
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    if port == 0:  # any free port, chosen now so the address printed is the real one
        port = free_port(host)
    token = args.token or os.environ.get("VOICE_AGENT_TOKEN")
    if not token and not is_loopback(host) and not args.no_auth:
        token = secrets.token_urlsafe(16)
    cert, key = args.tls_cert, args.tls_key
    if args.self_signed:
        cert, key = self_signed_certificate(cache_dir() / "tls", host)
    scheme = "https" if cert else "http"
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    query = f"?token={token}" if token else ""

    def serving(app) -> AgentServer:
        print(f"Open {scheme}://{shown}:{port}/{query} in a browser and press Talk.")
        if cert:
            print(
                f"TLS certificate {cert}, SHA-256 fingerprint {certificate_fingerprint(Path(cert))}"
            )
        if not is_loopback(host) and not token:
            print("warning: --no-auth: anyone who can reach this address can talk to the bot")
        print(
            f"Phone calls: point a Twilio number's webhook at POST http(s)://HOST:{port}/ (README)."
        )
        # uvicorn takes Ctrl-C from here on: a shutdown that lets every call's reply finish
        # (server.shutdown_grace_secs), then closes what is left.
        starting.started()
        options = {
            "log_level": "warning",
            "ssl_certfile": str(cert) if cert else None,
            "ssl_keyfile": str(key) if key else None,
            "timeout_graceful_shutdown": 5,
        }
        return AgentServer(uvicorn_config(app, host=host, port=port, **options))

    if args.cluster:
        return asyncio.run(_serve_cluster(args.cluster, config, token, serving))
    from pipelines.serve.server import create_app

    serving(create_app(stack, access_token=token)).run()
    return 0


async def _serve_cluster(address: str, config, token, serving) -> int:
    from pipelines.cluster.front_door import ClusterDesk, create_cluster_app
    from pipelines.cluster.start import ClusterError, start_cluster

    try:
        cluster = await start_cluster(address, config)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        print(
            f"Cluster: {len(cluster.nodes)} node(s), ready in {cluster.ready_secs:.0f} s: "
            + ", ".join(n.url for n in cluster.nodes)
        )
        desk = ClusterDesk(config, cluster.nodes, cluster.placer)
        await serving(create_cluster_app(desk, access_token=token)).serve()
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
