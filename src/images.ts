// `lazy-pages images`: what a dump holds, per task, read by the Rust image reader.
import { native } from './native'
import type { ImageSummary } from '../index'

export interface TaskTotals {
  pid: number
  vmas: number
  pages: number
  lazy: number
  inParent: number
  present: number
  bytes: number
}

export interface ImagesReport {
  dir: string
  tasks: Array<TaskTotals & { ppid: number; threads: number; state: string }>
  zombies: number[]
  total: Omit<TaskTotals, 'pid'>
}

export async function readImagesReport(dir: string): Promise<ImagesReport> {
  const summary: ImageSummary = await native.readImages(dir)
  const memory = new Map(summary.memory.map((m) => [m.pid, m]))
  const tasks: ImagesReport['tasks'] = []
  const zombies: number[] = []
  for (const task of summary.tasks) {
    const m = memory.get(task.pid)
    if (!m) {
      zombies.push(task.pid)
      continue
    }
    tasks.push({
      pid: task.pid,
      ppid: task.ppid,
      threads: task.threads.length,
      state: task.state,
      vmas: m.vmas,
      pages: m.pages,
      lazy: m.lazy,
      inParent: m.inParent,
      present: m.present,
      bytes: m.bytes,
    })
  }
  const total = { vmas: 0, pages: 0, lazy: 0, inParent: 0, present: 0, bytes: 0 }
  for (const t of tasks) {
    total.vmas += t.vmas
    total.pages += t.pages
    total.lazy += t.lazy
    total.inParent += t.inParent
    total.present += t.present
    total.bytes += t.bytes
  }
  return { dir: summary.dir, tasks, zombies, total }
}

export function formatImagesTable(report: ImagesReport): string {
  const header = ['PID', 'PPID', 'THREADS', 'VMAS', 'PAGES', 'LAZY', 'IN-PARENT', 'PRESENT', 'BYTES']
  const rows = report.tasks.map((t) =>
    [t.pid, t.ppid, t.threads, t.vmas, t.pages, t.lazy, t.inParent, t.present, t.bytes].map(String),
  )
  const tot = report.total
  rows.push(['total', '', '', tot.vmas, tot.pages, tot.lazy, tot.inParent, tot.present, tot.bytes].map(String))
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i])).join('  ')
  const out = [`images: ${report.dir}`, line(header), ...rows.map(line)]
  if (report.zombies.length) out.push(`zombies: ${report.zombies.join(', ')}`)
  return out.join('\n')
}
