/* Reads back every page this process owns and reports the verdict in result-<role>.txt. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "lpw.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

struct verdict {
	size_t pages, bad, zero_expected;
	uintptr_t first_bad;
	uint64_t fnv;
};

/* Feeds the word's bytes in memory (little-endian) order, as a reader of the dump would. */
static inline uint64_t fnv_word(uint64_t h, uint64_t x)
{
	int i;

	for (i = 0; i < 8; i++) {
		h ^= (x >> (8 * i)) & 0xff;
		h *= FNV_PRIME;
	}
	return h;
}

static void verify_region(const struct region *r, struct verdict *v)
{
	size_t p, j, words = page_size / 8;
	uint64_t h = v->fnv;

	for (p = 0; p < r->pages; p++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(r->addr + p * page_size);
		uintptr_t pa = r->pat_addr + p * page_size;
		uint64_t seed = 0;
		int filled = region_page_seed(r, p, &seed), bad = 0;

		for (j = 0; j < words; j++) {
			uint64_t x = w[j];
			uint64_t want = filled ? splitmix64(seed ^ (pa + 8 * j)) : 0;

			if (x != want && !bad) {
				bad = 1;
				if (!v->bad)
					v->first_bad = (uintptr_t)&w[j];
			}
			h = fnv_word(h, x);
		}
		v->bad += bad;
		v->zero_expected += !filled;
	}
	v->pages += r->pages;
	v->fnv = h;
}

static int by_addr(const void *a, const void *b)
{
	const struct region *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

void verify_and_report(const char *event)
{
	struct region sorted[LPW_MAX_REGIONS];
	struct verdict v = { .fnv = FNV_OFFSET };
	char line[512], name[64];
	int i, n;

	/* The checksum is defined over address order, independent of creation order. */
	memcpy(sorted, P.reg, P.nreg * sizeof(sorted[0]));
	qsort(sorted, P.nreg, sizeof(sorted[0]), by_addr);
	for (i = 0; i < P.nreg; i++)
		verify_region(&sorted[i], &v);

	P.seq++;
	n = snprintf(line, sizeof(line), "%s role=%s seq=%u event=%s pid=%d regions=%d pages=%zu bad=%zu zero_expected=%zu",
		     v.bad ? "FAIL" : "ok", P.role, P.seq, event, (int)getpid(), P.nreg,
		     v.pages, v.bad, v.zero_expected);
	if (v.bad)
		n += snprintf(line + n, sizeof(line) - n, " first_bad=0x%lx", (unsigned long)v.first_bad);
	n += snprintf(line + n, sizeof(line) - n, " fnv=%016llx\n", (unsigned long long)v.fnv);
	snprintf(name, sizeof(name), "result-%s.txt", P.role);
	state_write(name, line, n);
}
