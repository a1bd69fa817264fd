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
// Usage: board --divisor N [--port P] [--stats] [--warmup CYCLES]
// Prints "socket://127.0.0.1:P" on stdout once listening (P chosen by the OS when 0), after
// CYCLES clocks with the UART line idle (default 16): a board top's own power-on reset
// must be over before the first byte arrives, as on a board configured before use.
// With --stats, prints "stats k=v ..." on stderr per connection. On SIGUSR1 it prints a
// "snapshot k=v ..." line of the running totals (simulated cycles, bytes each way, the
// cycle of the last byte sent to the host, ...) for measurements in simulated time.

#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <signal.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// Reads what the client sent without blocking; false when the client went away.
bool receive(int fd, LineOut &line) {
    uint8_t tmp[8192];
    while (line.queue.size() - line.head < RX_HIGH_WATER) {
        ssize_t n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n == 0) return false;
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        line.queue.insert(line.queue.end(), tmp, tmp + n);
    }
    return true;
}

// Running totals over the harness's life, for "snapshot" lines.
struct Totals {
    uint64_t to_board = 0, from_board = 0;   // bytes, all connections
    uint64_t last_tx_cycle = 0;              // cycle when the last byte reached the host side
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
            "idle_waits=%llu busy_cycles=%llu busy_seconds=%.6f cpu_seconds=%.6f\n",
            (unsigned long long)board.cycles, (unsigned long long)(t.to_board + lo.sent),
            (unsigned long long)(t.from_board + li.received),
            (unsigned long long)t.last_tx_cycle, (unsigned long long)t.idle_waits,
            (unsigned long long)t.busy_cycles, t.busy_seconds,
            cpu.tv_sec + cpu.tv_nsec * 1e-9);
    fflush(stderr);
}

void serve(Board &board, int client, int divisor, bool stats, Totals &totals) {
    LineOut to_board{divisor};
    LineIn from_board{divisor};
    auto t0 = std::chrono::steady_clock::now();
    uint64_t c0 = board.cycles, busy_cycles = 0;
    double busy_seconds = 0;
    bool open = true, was_idle = false;
    while (open && !g_stop) {
        // Idle: nothing in flight anywhere, so wait for the client without simulating.
        if (!to_board.active() && !from_board.active() && board.top->idle) {
            if (!from_board.out.empty() && !send_all(client, from_board.out)) break;
            if (!was_idle) totals.idle_waits++;
            was_idle = true;
            // Snapshots are taken only here, so one asked for just after a batch includes
            // the batch's end (its last byte and the board going idle).
            if (g_snapshot) {
                g_snapshot = 0;
                print_snapshot(board, totals, to_board, from_board);
            }
            pollfd p{client, POLLIN, 0};
            if (poll(&p, 1, 100) <= 0) continue;
            if (!receive(client, to_board)) break;
            continue;
        }
        was_idle = false;
        auto b0 = std::chrono::steady_clock::now();
        uint64_t bc = board.cycles;
        auto *top = board.top.get();
        for (int i = 0; i < SERVICE_CYCLES; i++) {
            top->uart_rx = to_board.step();
            board.tick();
            from_board.step(top->uart_tx);
            if (from_board.got_byte) {
                from_board.got_byte = false;
                totals.last_tx_cycle = board.cycles;
            }
        }
        // Every completed byte goes out at once (not only when the line pauses): a
        // pipelining host needs its answers as early as a real serial port gives them.
        if (!from_board.out.empty() && !send_all(client, from_board.out)) break;
        open = receive(client, to_board);
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - b0)
                        .count();
        busy_cycles += board.cycles - bc;
        busy_seconds += dt;
        totals.busy_cycles += board.cycles - bc;
        totals.busy_seconds += dt;
    }
    if (!from_board.out.empty()) send_all(client, from_board.out);
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
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--port" && i + 1 < argc) port = atoi(argv[++i]);
        else if (a == "--divisor" && i + 1 < argc) divisor = atoi(argv[++i]);
        else if (a == "--stats") stats = true;
        else if (a == "--warmup" && i + 1 < argc) warmup = atol(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --divisor N [--port P] [--stats] [--warmup CYCLES]\n",
                    argv[0]);
            return 2;
        }
    }
    if (divisor < 4) {
        fprintf(stderr, "--divisor (clocks per UART bit) must be >= 4\n");
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
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
        }
        pollfd p{server, POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        int client = accept(server, nullptr, nullptr);
        if (client < 0) continue;
        int one = 1;
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(board, client, divisor, stats, totals);
        close(client);
    }
    close(server);
    board.top->final();
    return 0;
}
