/* Shared types for lpw, the lazy-pages test workload. See README.md. */
#ifndef LPW_H
#define LPW_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define LPW_MAX_REGIONS 256
#define LPW_MAX_CHILDREN 64

struct region {
	uintptr_t addr;     /* where the pages live now */
	uintptr_t pat_addr; /* address the pattern was computed for (differs after mremap) */
	size_t pages;
	uint64_t seed;
	const char *shape;  /* dense, sparse, cow, own, thread, zero */
	unsigned every;     /* sparse: page idx % every == 0 filled, others zero */
	unsigned own_mod, own_rem; /* cow: page idx % own_mod == own_rem uses own_seed */
	uint64_t own_seed;
	int thread;         /* thread: index of the owning thread, else -1 */
};

struct opts {
	const char *state;
	unsigned mib, every, children, threads;
	int zombie, corrupt;
	uint64_t seed;
};

/* Per-process identity; reset in each forked child. */
struct proc {
	char role[32];
	const char *workload;
	unsigned seq;
	struct region reg[LPW_MAX_REGIONS];
	int nreg;
	pid_t child[LPW_MAX_CHILDREN];
	char child_role[LPW_MAX_CHILDREN][32];
	int nchild;
};

extern struct proc P;
extern struct opts O;
extern size_t page_size;

/* pattern.c */
uint64_t splitmix64(uint64_t x);
uint64_t seed_for(uint64_t base, unsigned kind, unsigned idx);
void fill_page(uintptr_t addr, uintptr_t pat_addr, uint64_t seed);

/* region.c */
struct region *region_add(uintptr_t addr, size_t pages, uint64_t seed, const char *shape);
struct region *region_map(size_t pages, uint64_t seed, const char *shape);
void region_fill(const struct region *r);
int region_page_seed(const struct region *r, size_t idx, uint64_t *seed);

/* statefile.c */
void state_write(const char *name, const char *data, size_t len);
void write_ready(const char *prefix);
void clear_stale(void);
void bench_start(const char *result_name);
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* verify.c */
void verify_and_report(const char *event);

/* idle.c */
void signals_install(void);
void idle_loop(void (*on_usr2)(void)) __attribute__((noreturn));
pid_t fork_role(const char *role);

/* main.c */
void main_ready(void);

/* shapes */
void run_dense(void) __attribute__((noreturn));
void run_sparse(void) __attribute__((noreturn));
void run_tree(void) __attribute__((noreturn));
void run_threads(void) __attribute__((noreturn));
void run_churn(void) __attribute__((noreturn));

#endif
