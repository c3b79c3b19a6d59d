"""The ``ftpeft`` console script.

ftpeft push OUTPUT_DIR --hub_model_id me/name     # a finished run to the Hub
ftpeft ladder --time_budget 20m [recipe flags]    # which fine-tuning strategy for this data, measured
ftpeft predict OUTPUT_DIR --input test.csv --output preds.csv   # id, label, one probability column per class
ftpeft app OUTPUT_DIR                             # a local page to try the model (pip install 'ftpeft[app]')
ftpeft export OUTPUT_DIR --format onnx [--quantize int8]   # -> OUTPUT_DIR/onnx/ (pip install 'ftpeft[onnx]')
ftpeft export OUTPUT_DIR --quantize int8 --calibration_data TRAIN_IMAGES   # a timm model, convolutions too
"""

from __future__ import annotations

import argparse
import sys

from ftpeft.core.errors import FtpeftError, run_cli


class _CommandParser(argparse.ArgumentParser):
    """argparse whose errors are ftpeft's one line and exit 2 (not a usage block), as every recipe's are."""

    def error(self, message):  # argparse hook, also used by the subcommands' parsers
        raise FtpeftError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _CommandParser(prog="ftpeft", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="Push a finished run (model or adapter + card) to the Hub.")
    push.add_argument("output_dir", help="The --output_dir of a finished run.")
    push.add_argument("--hub_model_id", "--hub-model-id", help="Repo id, e.g. me/my-model. Default: <user>/<dir name>.")
    push.add_argument("--hub_private_repo", "--hub-private-repo", action="store_true", default=None)
    push.add_argument("--hub_token", "--hub-token", default=None, help="Default: the token from `hf auth login`.")
    push.add_argument("--merged", action="store_true", help="Push OUTPUT_DIR/merged (from --merge_adapter).")
    # the ladder takes the recipes' own flags, so its parser is the ladder's (see ftpeft ladder --help)
    commands.add_parser("ladder", help="Probe every layer, run the strategies within a budget, choose on validation.")
    # predict's flags are dataclass fields (see ftpeft predict --help)
    commands.add_parser("predict", help="Score a file of texts or a folder of images with a finished run -> CSV.")
    app = commands.add_parser("app", help="A local Gradio page: type a text or upload an image, see the probabilities.")
    app.add_argument("output_dir", help="The --output_dir of a finished run (any kind `ftpeft predict` reads).")
    app.add_argument("--host", default="127.0.0.1", help="Address to serve on; 0.0.0.0 opens it to the network.")
    app.add_argument("--port", type=int, default=None, help="Default: the first free port from 7860.")
    app.add_argument("--share", action="store_true", help="Also a public gradio.live link (goes through the Internet).")
    export = commands.add_parser("export", help="Export a finished run to ONNX (for ftpeft predict --backend onnx).")
    export.add_argument("output_dir", help="The --output_dir of a finished run: text (full, merged LoRA) or timm.")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="The export format (default: onnx).")
    export.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="int8: dynamic int8 quantisation (smaller, faster); convolutions stay fp32 without --calibration_data.",
    )
    export.add_argument(
        "--calibration_data",
        default=None,
        help="With --quantize int8 of an image model: a folder of its training images (up to 256 are read) to "
        "calibrate static int8 of every layer, convolutions included.",
    )
    export.add_argument("--output", default=None, help="The folder to write. Default: OUTPUT_DIR/onnx.")
    export.add_argument("--overwrite", action="store_true", help="Replace an earlier export in --output.")
    return parser


def parse(argv: list[str]):
    """One ``ftpeft`` command's arguments, parsed by the parser that runs it, without running it: the ladder's
    (modality, flags), predict's PredictArguments, or the namespace of push / app / export."""
    if argv[:1] == ["ladder"]:
        from ftpeft.ladder.run import parse_ladder_args

        return parse_ladder_args(argv[1:])
    if argv[:1] == ["predict"]:
        from ftpeft.predict.job import parse_predict_args

        return parse_predict_args(argv[1:])
    return _parser().parse_args(argv)


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ladder"]:
        from ftpeft.ladder.run import run_ladder

        run_ladder(argv[1:])
        return 0
    if argv[:1] == ["predict"]:
        from ftpeft.predict.job import main as predict_main

        predict_main(argv[1:])
        return 0
    args = parse(argv)
    if args.command == "app":
        from ftpeft.app.page import serve

        serve(args.output_dir, host=args.host, port=args.port, share=args.share)
        return 0
    if args.command == "export":
        from ftpeft.export.onnx import export_onnx

        print(export_onnx(args.output_dir, args.output, args.quantize, args.overwrite, args.calibration_data).line())
        return 0
    from ftpeft.core.hub import PushTarget, check_finished_run, push_run, resolve_token

    check_finished_run(args.output_dir, args.merged)
    token = resolve_token(args.hub_token)
    if not token:
        raise FtpeftError("ftpeft push: not logged in; run `hf auth login` or pass --hub_token.")
    url = push_run(args.output_dir, PushTarget(args.hub_model_id, args.hub_private_repo, token), merged=args.merged)
    print(f"pushed {args.output_dir} to {url}")
    return 0


if __name__ == "__main__":  # accelerate launch -m ftpeft.cli predict ...
    main()
