/*
 * churn: on the first SIGUSR2 (sent while a lazy restore may still be filling
 * the region) fork, MADV_DONTNEED, munmap and mremap parts of the region, so
 * the daemon must handle fork/remove/unmap/remap events mid-transfer.
 * The region is cut in eighths: [1/8,2/8) dropped, [3/8,4/8) unmapped,
 * [5/8,6/8) moved; the rest stays in place.
 */
#include <errno.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "lpw.h"

static int churned;

static void churn(void)
{
	struct region whole = P.reg[0];
	size_t e = whole.pages / 8, len = e * page_size;
	uintptr_t b = whole.addr, moved;
	void *dst;
	pid_t pid;

	if (churned) {
		verify_and_report("usr2");
		return;
	}
	churned = 1;
	pid = fork_role("churnchild");
	if (pid == 0) {
		/* Still holds the untouched pre-churn region, through its own copy-on-write mm. */
		verify_and_report("fork");
		_exit(0);
	}

	if (madvise((void *)(b + 1 * len), len, MADV_DONTNEED))
		die("madvise");
	if (munmap((void *)(b + 3 * len), len))
		die("munmap");
	/* A reserved PROT_NONE hole guarantees the destination is a fresh, unused address. */
	dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED)
		die("mmap hole");
	if (mremap((void *)(b + 5 * len), len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst) != dst)
		die("mremap");
	moved = (uintptr_t)dst;

	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;

	P.nreg = 0;
	region_add(b, e, whole.seed, "dense");
	region_add(b + 1 * len, e, 0, "zero");
	region_add(b + 2 * len, e, whole.seed, "dense");
	region_add(b + 4 * len, e, whole.seed, "dense");
	region_add(moved, e, whole.seed, "dense")->pat_addr = b + 5 * len;
	region_add(b + 6 * len, whole.pages - 6 * e, whole.seed, "dense");
	/* Layout first, so whoever sees the new result can already read the layout. */
	write_ready("churned");
	verify_and_report("usr2");
}

void run_churn(void)
{
	if (O.mib < 64)
		die("churn needs --mib >= 64");
	region_fill(region_map((size_t)O.mib * (1 << 20) / page_size, O.seed, "dense"));
	main_ready();
	idle_loop(churn);
}
