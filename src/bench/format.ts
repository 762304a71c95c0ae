// Cells of the bench's Markdown tables: numbers to fixed places ('–' for none), rows,
// and the verdict on a target.
const fixed = (places: number) => (x: number) => (Number.isFinite(x) ? x.toFixed(places) : '–')

export const f1 = fixed(1)
export const f2 = fixed(2)
export const f3 = fixed(3)
export const pct = (x: number) => (Number.isFinite(x) ? `${(x * 100).toFixed(0)} %` : '–')
export const row = (cells: Array<string | number>) => `| ${cells.join(' | ')} |`
export const verdict = (ok: boolean) => (ok ? 'met' : '**not met**')
