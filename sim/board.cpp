// The simulated board: the Verilated BoardTop with its UART pins bridged to a TCP socket.
//
// Listens on 127.0.0.1 only. Bytes from the client are shifted into `uart_rx` bit by bit
// at `divisor` clocks per bit (8N1), and `uart_tx` is decoded the same way (mid-bit
// sampling) into bytes sent back to the client, so the gateware UART is exercised as on
// the board. The clock is toggled here, in C++, and the socket is serviced only every
// SERVICE_CYCLES cycles. When the design reports `idle` (nothing received, sent or
// computing) and no client byte is waiting, simulated time stops and the harness sleeps
// in poll(): an idle board costs no CPU. One client at a time; the board keeps its state
// (loaded model) across connections, like a real board across serial sessions.
//
// Idle skipping never skips time while bytes are in flight: it needs the host→board queue
// empty and its line idle, the board→host line idle, and the design's `idle` (UART, RX FIFO,
// link and core all quiet). So simulated time is wire time as on a real board, except
// where the host itself left the line idle with the board having nothing to do; such
// waits are counted (`idle_waits`), so a measurement can prove none happened mid-batch.
//
// USB model (--usb-latency CYCLES --usb-frame CYCLES, both > 0): the FT2232H path of a real
// board, in simulated time. Host→board bytes reach the UART only at the next USB frame
// boundary (every --usb-frame cycles); board→host bytes wait in the bridge's buffer until
// 510 are waiting or its latency timer (--usb-latency cycles, restarted whenever it sends)
// expires. While the design is idle but such a release is due, simulated time jumps to it.
//
// A second client while one is connected gets BUSY_MESSAGE and is closed at once.
//
// Usage: board --divisor N [--port P] [--stats] [--warmup CYCLES]
//              [--usb-latency C --usb-frame C]
// Prints "socket://127.0.0.1:P" on stdout once listening (P chosen by the OS when 0), after
// CYCLES clocks with the UART line idle (default 16): a board top's own power-on reset
// must be over before the first byte arrives, as on a board configured before use.
// With --stats, prints "stats k=v ..." on stderr per connection. On SIGUSR1 it prints a
// "snapshot k=v ..." line of the running totals (simulated cycles, bytes each way, the
// cycle of the last byte sent to the host, ...) for measurements in simulated time; it
// also times a batch on the board's own pins: the first host byte's start bit after the
// snapshot (first_rx_cycle) and the last byte of a response frame off uart_tx
// (last_data_cycle), so a measurement can tell the USB path's waits from the board's.
// Response bytes are told from the fill bytes between frames by following the framing
// (ResponseFrames), not by value: a frame's CRC byte may be 0 like the fill.

#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <signal.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <chrono>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <ctime>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

#include "Vboard_top.h"
#include "verilated.h"

static volatile sig_atomic_t g_stop = 0;
static volatile sig_atomic_t g_snapshot = 0;
static void on_signal(int) { g_stop = 1; }
static void on_usr1(int) { g_snapshot = 1; }

namespace {

// Socket work at most once per this many cycles (~2 byte times at 36 MHz / 3 Mbaud), so
// the syscalls cost next to nothing next to the model's evaluation.
constexpr int SERVICE_CYCLES = 256;
constexpr size_t RX_HIGH_WATER = 1 << 16;
// Board→host bytes the FT2232H sends in one USB packet (512 minus 2 status bytes).
constexpr size_t USB_PACKET = 510;
// Check for a second client once per this many service rounds.
constexpr int ACCEPT_ROUNDS = 64;
// What a second client gets (no 'Z' = 0x5A, the response sync byte); the driver looks for
// it (fpgacnn.sw.driver.BUSY_MARKER).
const char BUSY_MESSAGE[] = "fpgacnn sim-board busy: another client is connected\n";

// Follows the board's response framing (fpgacnn.hw.protocol: sync 0x5A, status, opcode,
// 16-bit little-endian payload length, payload, CRC-16) to tell frame bytes from the fill
// bytes (0) the board sends between frames.
struct ResponseFrames {
    static constexpr uint8_t SYNC = 0x5A;
    static constexpr int HEADER = 5;
    int header = 0;            // header bytes seen of the current frame; 0 between frames
    uint32_t remaining = 0;    // payload and CRC bytes still to come
    uint32_t length = 0;

    // Whether `b`, the next byte off uart_tx, belongs to a frame. Between frames only the
    // sync byte starts one; any other byte but the fill counts as data (never expected).
    bool data(uint8_t b) {
        if (remaining) { remaining--; return true; }
        if (header == 0) {
            if (b != SYNC) return b != 0;
            header = 1;
            return true;
        }
        if (header == 3) length = b;
        if (header == 4) length |= uint32_t(b) << 8;
        if (++header == HEADER) { header = 0; remaining = length + 2; }
        return true;
    }
};

struct Board {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vboard_top> top;
    uint64_t cycles = 0;

    // The model resets itself (sim/simboard.py: SimTop, a power-on reset of 7 cycles; a
    // board top's netlist, its own reset after PLL lock): no reset input, so Verilator's
    // per-eval input logic stays tiny.
    explicit Board(long warmup) : ctx(new VerilatedContext), top(new Vboard_top(ctx.get())) {
        top->clk = 0;
        top->uart_rx = 1;
        top->eval();
        for (long i = 0; i < warmup; i++) tick();
    }
    inline void tick() {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
        cycles++;
    }
};

// Host → board: shifts queued bytes onto uart_rx.
struct LineOut {
    int divisor;
    std::vector<uint8_t> queue;
    size_t head = 0;
    int timer = 0, bits = 0;
    uint32_t shreg = 0;
    uint64_t sent = 0;

    bool active() const { return bits != 0 || head < queue.size(); }
    inline int step() {  // the line level for this cycle
        if (timer == 0) {
            if (bits == 0 && head < queue.size()) {
                sent++;
                shreg = (uint32_t(queue[head++]) << 1) | (1u << 9);
                bits = 10;
                if (head == queue.size()) { queue.clear(); head = 0; }
            }
            if (bits != 0) { timer = divisor; bits--; }
            else return 1;
            level = shreg & 1;
            shreg >>= 1;
        }
        timer--;
        return level;
    }
    int level = 1;
};

// Board → host: decodes uart_tx into bytes.
struct LineIn {
    int divisor;
    int state = -1;  // -1 idle, 0 start bit, 1..8 data bits, 9 stop bit
    int timer = 0;
    uint32_t byte = 0;
    std::vector<uint8_t> out;
    uint64_t received = 0;
    bool got_byte = false;  // a byte was completed since the flag was cleared

    bool active() const { return state >= 0; }
    inline void step(int level) {
        if (state < 0) {
            if (!level) { state = 0; timer = divisor / 2; }
            return;
        }
        if (--timer > 0) return;
        timer = divisor;
        if (state == 0) {
            if (level) { state = -1; return; }  // glitch
            byte = 0;
        } else if (state <= 8) {
            byte |= uint32_t(level) << (state - 1);
        } else {
            if (level) { out.push_back(uint8_t(byte)); received++; got_byte = true; }
            state = -1;
            return;
        }
        state++;
    }
};

int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);  // never reachable from outside
    addr.sin_port = htons(port);
    if (bind(fd, (sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s (try another --port)\n", port,
                strerror(errno));
        exit(1);
    }
    if (listen(fd, 1) < 0) { perror("listen"); exit(1); }
    socklen_t len = sizeof addr;
    getsockname(fd, (sockaddr *)&addr, &len);
    printf("socket://127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    return fd;
}

bool send_all(int fd, std::vector<uint8_t> &buf) {
    size_t done = 0;
    while (done < buf.size()) {
        ssize_t n = send(fd, buf.data() + done, buf.size() - done, MSG_NOSIGNAL);
        if (n <= 0) return false;
        done += size_t(n);
    }
    buf.clear();
    return true;
}

// Reads what the client sent without blocking into `dst`; false when the client went away.
bool receive(int fd, std::vector<uint8_t> &dst, size_t queued) {
    uint8_t tmp[8192];
    while (queued < RX_HIGH_WATER) {
        ssize_t n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n == 0) return false;
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        dst.insert(dst.end(), tmp, tmp + n);
        queued += size_t(n);
    }
    return true;
}

// The USB bridge between the client and the UART (see the top of the file); with
// latency 0 it passes bytes straight through.
struct Usb {
    uint64_t latency = 0, frame = 0;        // cycles; 0 = no USB model
    std::vector<uint8_t> down;              // host→board, waiting for a USB frame
    uint64_t down_due = 0;                  // cycle of the frame that carries `down`
    std::vector<uint8_t> up;                // board→host, in the bridge's buffer
    uint64_t up_due = 0;                    // latency timer expiry
    bool up_data = false;                   // `up` holds a response byte (set by the caller)

    bool on() const { return latency != 0; }
    // Client bytes arrive; false when the client went away.
    bool from_client(int fd, LineOut &line, uint64_t now) {
        if (!on()) return receive(fd, line.queue, line.queue.size() - line.head);
        bool empty = down.empty();
        bool open = receive(fd, down, down.size() + line.queue.size() - line.head);
        if (empty && !down.empty()) down_due = (now / frame + 1) * frame;
        return open;
    }
    // Releases what is due at cycle `now`: frames to the UART, packets to the client.
    // Returns false when the client went away; sets `released` when data reached it.
    bool step(int fd, LineOut &line, LineIn &in, uint64_t now, bool &released) {
        released = false;
        if (!on()) {
            released = !in.out.empty();
            return in.out.empty() || send_all(fd, in.out);
        }
        if (!down.empty() && now >= down_due) {
            line.queue.insert(line.queue.end(), down.begin(), down.end());
            down.clear();
        }
        up.insert(up.end(), in.out.begin(), in.out.end());
        in.out.clear();
        if (up.size() >= USB_PACKET || now >= up_due) {
            up_due = now + latency;
            released = up_data;
            up_data = false;
            if (!up.empty() && !send_all(fd, up)) return false;
        }
        return true;
    }
    // The next cycle at which something is due (UINT64_MAX: nothing).
    uint64_t next_due() const {
        uint64_t t = UINT64_MAX;
        if (!down.empty()) t = down_due;
        if (!up.empty() && up_due < t) t = up_due;
        return t;
    }
};

// Answers a second client with BUSY_MESSAGE and closes it.
void refuse_extra_client(int server) {
    pollfd p{server, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return;
    int extra = accept(server, nullptr, nullptr);
    if (extra < 0) return;
    send(extra, BUSY_MESSAGE, sizeof BUSY_MESSAGE - 1, MSG_NOSIGNAL);
    close(extra);
}

// Running totals over the harness's life, for "snapshot" lines.
struct Totals {
    uint64_t to_board = 0, from_board = 0;   // bytes, all connections
    uint64_t last_tx_cycle = 0;              // cycle when the last byte reached the host side
    uint64_t last_data_cycle = 0;            // ... left the board's UART (before the bridge)
    uint64_t first_rx_cycle = 0;             // the first host byte after a snapshot started
    bool first_rx_armed = true;              //   on the board's UART line
    uint64_t idle_waits = 0;                 // times simulated time stopped (idle board)
    uint64_t busy_cycles = 0;
    double busy_seconds = 0;
};

void print_snapshot(const Board &board, const Totals &t, const LineOut &lo,
                    const LineIn &li) {
    // CPU time too: wall time on a shared machine also counts other processes' turns.
    timespec cpu{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
    fprintf(stderr, "snapshot cycles=%llu to_board=%llu from_board=%llu last_tx_cycle=%llu "
            "idle_waits=%llu busy_cycles=%llu busy_seconds=%.6f cpu_seconds=%.6f "
            "last_data_cycle=%llu first_rx_cycle=%llu\n",
            (unsigned long long)board.cycles, (unsigned long long)(t.to_board + lo.sent),
            (unsigned long long)(t.from_board + li.received),
            (unsigned long long)t.last_tx_cycle, (unsigned long long)t.idle_waits,
            (unsigned long long)t.busy_cycles, t.busy_seconds,
            cpu.tv_sec + cpu.tv_nsec * 1e-9, (unsigned long long)t.last_data_cycle,
            (unsigned long long)t.first_rx_cycle);
    fflush(stderr);
}

void serve(Board &board, int server, int client, int divisor, bool stats, Totals &totals,
           Usb &usb) {
    LineOut to_board{divisor};
    LineIn from_board{divisor};
    ResponseFrames frames;
    auto t0 = std::chrono::steady_clock::now();
    uint64_t c0 = board.cycles, busy_cycles = 0;
    double busy_seconds = 0;
    bool open = true, was_idle = false, released = false;
    int rounds = 0;
    if (usb.on()) usb.up_due = board.cycles + usb.latency;
    while (open && !g_stop) {
        if (++rounds % ACCEPT_ROUNDS == 0) refuse_extra_client(server);
        bool quiet = !to_board.active() && !from_board.active() && board.top->idle;
        uint64_t due = usb.next_due();
        if (quiet && due != UINT64_MAX) {
            // Idle but a USB release is due: nothing changes until then, so jump to it.
            if (due > board.cycles) board.cycles = due;
            open = usb.step(client, to_board, from_board, board.cycles, released);
            if (released) totals.last_tx_cycle = board.cycles;
            continue;
        }
        // Idle: nothing in flight anywhere, so wait for the client without simulating.
        if (quiet) {
            if (!usb.step(client, to_board, from_board, board.cycles, released)) break;
            if (!was_idle) totals.idle_waits++;
            was_idle = true;
            // Snapshots are taken only here, so one asked for just after a batch includes
            // the batch's end (its last byte and the board going idle).
            if (g_snapshot) {
                g_snapshot = 0;
                print_snapshot(board, totals, to_board, from_board);
                totals.first_rx_armed = true;
            }
            pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
            if (poll(p, 2, 100) <= 0) continue;
            if (p[1].revents & POLLIN) refuse_extra_client(server);
            if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) &&
                !usb.from_client(client, to_board, board.cycles)) break;
            continue;
        }
        was_idle = false;
        auto b0 = std::chrono::steady_clock::now();
        uint64_t bc = board.cycles;
        auto *top = board.top.get();
        for (int i = 0; i < SERVICE_CYCLES; i++) {
            top->uart_rx = to_board.step();
            if (totals.first_rx_armed && !top->uart_rx) {   // the first start bit
                totals.first_rx_armed = false;
                totals.first_rx_cycle = board.cycles;
            }
            board.tick();
            from_board.step(top->uart_tx);
            if (from_board.got_byte) {
                from_board.got_byte = false;
                // The batch ends with the last byte of a response (not the fill after it).
                if (frames.data(from_board.out.back())) {
                    totals.last_data_cycle = board.cycles;
                    usb.up_data = true;
                    if (!usb.on()) totals.last_tx_cycle = board.cycles;
                }
            }
        }
        // Every completed byte goes out at once (not only when the line pauses): a
        // pipelining host needs its answers as early as a real serial port gives them.
        if (!usb.step(client, to_board, from_board, board.cycles, released)) break;
        if (usb.on() && released) totals.last_tx_cycle = board.cycles;
        open = usb.from_client(client, to_board, board.cycles);
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - b0)
                        .count();
        busy_cycles += board.cycles - bc;
        busy_seconds += dt;
        totals.busy_cycles += board.cycles - bc;
        totals.busy_seconds += dt;
    }
    if (!from_board.out.empty()) send_all(client, from_board.out);
    usb.down.clear();       // a closed port loses what the host had queued
    usb.up.clear();
    totals.to_board += to_board.sent;
    totals.from_board += from_board.received;
    if (stats) {
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        fprintf(stderr, "stats cycles=%llu seconds=%.3f busy_cycles=%llu busy_seconds=%.3f "
                "rate=%.0f\n", (unsigned long long)(board.cycles - c0), s,
                (unsigned long long)busy_cycles, busy_seconds,
                busy_seconds > 0 ? busy_cycles / busy_seconds : 0.0);
        fflush(stderr);
    }
}

}  // namespace

int main(int argc, char **argv) {
    int port = 0, divisor = 0;
    long warmup = 16;
    bool stats = false;
    Usb usb;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--port" && i + 1 < argc) port = atoi(argv[++i]);
        else if (a == "--divisor" && i + 1 < argc) divisor = atoi(argv[++i]);
        else if (a == "--stats") stats = true;
        else if (a == "--warmup" && i + 1 < argc) warmup = atol(argv[++i]);
        else if (a == "--usb-latency" && i + 1 < argc) usb.latency = strtoull(argv[++i], 0, 10);
        else if (a == "--usb-frame" && i + 1 < argc) usb.frame = strtoull(argv[++i], 0, 10);
        else {
            fprintf(stderr, "usage: %s --divisor N [--port P] [--stats] [--warmup CYCLES] "
                    "[--usb-latency CYCLES --usb-frame CYCLES]\n", argv[0]);
            return 2;
        }
    }
    if (divisor < 4) {
        fprintf(stderr, "--divisor (clocks per UART bit) must be >= 4\n");
        return 2;
    }
    if ((usb.latency == 0) != (usb.frame == 0)) {
        fprintf(stderr, "--usb-latency and --usb-frame go together (both > 0)\n");
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction usr1{};
    usr1.sa_handler = on_usr1;            // no SA_RESTART: wakes poll() up at once
    sigaction(SIGUSR1, &usr1, nullptr);

    Board board(warmup);
    Totals totals;
    int server = listen_on(port);
    while (!g_stop) {
        if (g_snapshot) {
            g_snapshot = 0;
            print_snapshot(board, totals, LineOut{divisor}, LineIn{divisor});
            totals.first_rx_armed = true;
        }
        pollfd p{server, POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        int client = accept(server, nullptr, nullptr);
        if (client < 0) continue;
        int one = 1;
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(board, server, client, divisor, stats, totals, usb);
        close(client);
    }
    close(server);
    board.top->final();
    return 0;
}
