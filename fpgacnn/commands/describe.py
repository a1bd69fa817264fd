"""``fpgacnn describe``: the layer table of a network description, its memory budget on a
board (``--board``), or the limits of every board (``--limits``)."""

from ..sw import network as nets

NETWORKS = {"lenet5": nets.lenet5, "seeds32x3": nets.seeds_cifar_example,
            "seeds-layer": nets.seeds_layer, "cifar-small": nets.cifar_small,
            "wide64": nets.wide64}


def configure(parser):
    from ..hw.config import CONFIGS
    parser.add_argument("network", nargs="?", default="lenet5", choices=sorted(NETWORKS),
                        help="network description (default: lenet5)")
    parser.add_argument("--board", choices=sorted(CONFIGS), default=None,
                        help="also print the memory budget on this board's configuration: "
                             "each memory's size, what the plan puts there, the headroom")
    parser.add_argument("--limits", action="store_true",
                        help="print the limits table of every board (as in README) instead")


def run(args):
    if args.limits:
        from ..sw.budget import limits_table
        print(limits_table())
        return 0
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
    if args.board is None:
        return 0
    from ..hw.config import get_config
    from ..sw import compiler
    from ..sw.budget import format_budget
    config = get_config(args.board)
    print()
    print("\n".join(format_budget(net, config)))
    try:        # the limits the budget does not show (reduction, pooling, fields)
        program = compiler.compile_network(net, nets.random_params(net, 0), config)
    except compiler.CompileError as e:
        print(f"compiler: {e}")
        return 1
    if program.streamed:
        per_stage = ", ".join(str(program.descriptor_stages.count(i))
                              for i in range(len(program.stages)))
        print(f"streamed plan: {len(program.descriptors)} descriptors (per stage: "
              f"{per_stage}), {program.copy_bytes():,} B copied per image, "
              f"{sum(program.ideal_cycles()):,} ideal cycles (array beats + copied bytes); "
              f"result at activation address {program.output_base}")
    return 0
