/* memstamp: guest memory integrity across a live migration, as QEMU's own migration test
 * checks it (tests/migration/i386/a-b-bootblock.S), in a process instead of a boot block.
 *
 * Stamps every 8-byte word of every page of a locked region with (generation << 20 | page),
 * one pass per generation, a pass every INTERVAL ms, for as long as it runs. Before it stamps
 * a page with the next generation it checks the whole page still holds the last one: a page
 * the migration lost (stale: an older generation), tore (words of different generations) or
 * that anything else changed shows at the next pass, wherever the guest now runs.
 *
 * usage: memstamp PAGES INTERVAL_MS STATUS_FILE
 * stdout (a log): "PKVM-MEM START pid=P addr=0xA pages=N", then one "PKVM-MEM BAD ..." line
 * per bad page (the first 16; all are counted). STATUS_FILE is rewritten after every pass:
 * "PKVM-MEM GEN g BAD b". Freestanding (raw Linux x86-64 system calls, no libc): a few KB,
 * so it can be sent to any guest through its shell.
 */
typedef unsigned long u64;
typedef long i64;

static i64 sys(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f)
{
    i64 ret;
    register i64 r10 __asm__("r10") = d;
    register i64 r8 __asm__("r8") = e;
    register i64 r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8),
                     "r"(r9) : "rcx", "r11", "memory");
    return ret;
}

#define SYS_WRITE 1
#define SYS_OPEN 2
#define SYS_PWRITE 18
#define SYS_MMAP 9
#define SYS_NANOSLEEP 35
#define SYS_GETPID 39
#define SYS_EXIT 60
#define SYS_MLOCK 149
#define PAGE 4096
#define WORDS (PAGE / 8)
#define PAGE_BITS 20
#define MAX_REPORTED 16

static char line[256];
static int pos;

static void put(const char *s) { while (*s && pos < (int)sizeof(line) - 1) line[pos++] = *s++; }

static void num(u64 v, int base)
{
    char tmp[24];
    int n = 0;
    if (base == 16) put("0x");
    do { tmp[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    while (n) { char c[2] = {tmp[--n], 0}; put(c); }
}

static void flush(int fd) { line[pos++] = '\n'; sys(SYS_WRITE, fd, (i64)line, pos, 0, 0, 0); pos = 0; }

static void flush_at(int fd) { line[pos++] = '\n'; sys(SYS_PWRITE, fd, (i64)line, pos, 0, 0, 0); pos = 0; }

static u64 parse(const char *s)
{
    u64 v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
    return v;
}

static void fail(const char *why)
{
    put("PKVM-MEM ERROR "); put(why); flush(1);
    sys(SYS_EXIT, 2, 0, 0, 0, 0, 0);
}

void run(i64 *sp)
{
    i64 argc = sp[0];
    char **argv = (char **)(sp + 1);
    if (argc != 4) fail("usage: memstamp PAGES INTERVAL_MS STATUS_FILE");
    u64 pages = parse(argv[1]), interval = parse(argv[2]);
    if (pages == 0 || pages >= (1UL << PAGE_BITS)) fail("PAGES out of range");
    i64 status = sys(SYS_OPEN, (i64)argv[3], 01 | 0100 | 01000, 0644, 0, 0, 0);
    if (status < 0) fail("cannot open the status file");
    i64 addr = sys(SYS_MMAP, 0, (i64)(pages * PAGE), 3, 0x22, -1, 0);  /* rw, private|anon */
    if (addr < 0 && addr > -4096) fail("mmap");
    if (sys(SYS_MLOCK, addr, (i64)(pages * PAGE), 0, 0, 0, 0) < 0) fail("mlock");
    volatile u64 *mem = (volatile u64 *)addr;
    put("PKVM-MEM START pid="); num((u64)sys(SYS_GETPID, 0, 0, 0, 0, 0, 0), 10);
    put(" addr="); num((u64)addr, 16); put(" pages="); num(pages, 10); flush(1);
    u64 bad = 0;
    struct { i64 sec, nsec; } pause = {(i64)(interval / 1000), (i64)(interval % 1000) * 1000000};
    for (u64 gen = 1;; gen++) {
        for (u64 p = 0; p < pages; p++) {
            volatile u64 *page = mem + p * WORDS;
            u64 want = ((gen - 1) << PAGE_BITS) | p;  /* what the last pass wrote (0: nothing) */
            if (gen > 1) {
                for (u64 w = 0; w < WORDS; w++) {
                    u64 saw = page[w];
                    if (saw == want) continue;
                    if (++bad <= MAX_REPORTED) {
                        put("PKVM-MEM BAD gen="); num(gen - 1, 10); put(" page="); num(p, 10);
                        put(" addr="); num((u64)addr + p * PAGE + w * 8, 16);
                        put(" word="); num(w, 10); put(" saw="); num(saw, 16);
                        put(" want="); num(want, 16); flush(1);
                    }
                    break;
                }
            }
            u64 next = (gen << PAGE_BITS) | p;
            for (u64 w = 0; w < WORDS; w++) page[w] = next;
        }
        put("PKVM-MEM GEN "); num(gen, 10); put(" BAD "); num(bad, 10);
        while (pos < 63) line[pos++] = ' ';  /* a fixed length: each rewrite covers the last */
        flush_at(status);
        if (interval) sys(SYS_NANOSLEEP, (i64)&pause, 0, 0, 0, 0, 0);
    }
}

__asm__(".globl _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call run\n  hlt\n");
