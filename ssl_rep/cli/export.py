"""ssl-export --checkpoint CKPT --out PATH [--format torchvision|timm|safetensors]: the encoder for other tools."""
from __future__ import annotations

import argparse

from ..encoders import load_encoder
from ..export import FORMATS, export_encoder
from .common import EXPECTED_ERRORS, friendly_errors, setup_logging

LOADS_WITH = {
    "torchvision": "m = torchvision.models.{arch}(); m.fc = torch.nn.Identity(); "
                   "m.load_state_dict(torch.load('{path}'), strict=True)",
    "timm": "m = timm.create_model('{arch}', num_classes=0); m.load_state_dict(torch.load('{path}'), strict=True)",
    "safetensors": "ssl_rep.load_encoder('{path}')   (its preprocessing: encoder.preprocess)",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ssl-export", description="Export a trained encoder: torchvision or timm "
                                     "weights for a ResNet / timm model, safetensors + JSON for any encoder.")
    parser.add_argument("--checkpoint", required=True, help="OUT/encoder.pt or OUT/checkpoints/last.pt")
    parser.add_argument("--out", required=True, help="file to write (safetensors also writes OUT.json)")
    parser.add_argument("--format", choices=FORMATS, default="safetensors")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    with friendly_errors("ssl-export", *EXPECTED_ERRORS):
        path = export_encoder(args.checkpoint, args.out, args.format)
        arch = load_encoder(args.checkpoint).encoder_name.removeprefix("timm:")
    print(f"wrote {path}" + (f" and {path.with_suffix('.json')}" if args.format == "safetensors" else ""))
    print("load it with: " + LOADS_WITH[args.format].format(arch=arch, path=path))


if __name__ == "__main__":
    main()
