/* The pattern is a pure function of (seed, address) so any tool can recompute it. */
#include "lpw.h"

uint64_t splitmix64(uint64_t x)
{
	uint64_t z;

	x += 0x9E3779B97F4A7C15ULL;
	z = x;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* Distinct seeds per role/thread, derived so one --seed reproduces a whole run. */
uint64_t seed_for(uint64_t base, unsigned kind, unsigned idx)
{
	return splitmix64(base ^ ((uint64_t)kind << 32 | idx));
}

void fill_page(uintptr_t addr, uintptr_t pat_addr, uint64_t seed)
{
	uint64_t *w = (uint64_t *)addr;
	size_t i, n = page_size / 8;

	for (i = 0; i < n; i++)
		w[i] = splitmix64(seed ^ (pat_addr + 8 * i));
}
