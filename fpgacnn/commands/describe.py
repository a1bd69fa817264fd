"""``fpgacnn describe``: the layer table of a network description."""

from ..sw import network as nets

NETWORKS = {"lenet5": nets.lenet5, "seeds32x3": nets.seeds_cifar_example}


def configure(parser):
    parser.add_argument("network", nargs="?", default="lenet5", choices=sorted(NETWORKS),
                        help="network description (default: lenet5)")


def run(args):
    net = NETWORKS[args.network]()
    print(f"{net.name}: input {net.input_shape} (C, H, W)")
    print(f"{'#':>2} {'layer':<28} {'output':<14} {'params':>8} {'MACs':>9}")
    for s in net.stages():
        if s.kind == "conv":
            what = f"conv {s.out_channels}@{s.kernel}x{s.kernel} s{s.stride} p{s.pad}"
        else:
            what = f"fc {s.in_shape[0]}->{s.out_channels}"
        if s.relu:
            what += " relu"
        if s.pool:
            what += f" pool{s.pool[0]}/{s.pool[1]}"
        print(f"{s.index:>2} {what:<28} {s.out_shape!s:<14} {s.parameters:>8,} "
              f"{s.macs:>9,}")
    print(f"   {'total':<28} {'':<14} {net.parameters:>8,} {net.macs:>9,}")
    return 0
