// Minimal raster drawing on a pngjs image: rectangles, thick lines, bitmap text.
import { PNG } from 'pngjs'

import { glyph, GLYPH_H, GLYPH_W } from './font'

export type Rgb = [number, number, number]

export class Canvas {
  readonly png: PNG

  constructor(
    readonly w: number,
    readonly h: number,
  ) {
    this.png = new PNG({ width: w, height: h })
    this.rect(0, 0, w, h, [255, 255, 255])
  }

  px(x: number, y: number, c: Rgb): void {
    x = Math.round(x)
    y = Math.round(y)
    if (x < 0 || y < 0 || x >= this.w || y >= this.h) return
    const i = (y * this.w + x) * 4
    this.png.data[i] = c[0]
    this.png.data[i + 1] = c[1]
    this.png.data[i + 2] = c[2]
    this.png.data[i + 3] = 255
  }

  rect(x: number, y: number, w: number, h: number, c: Rgb): void {
    for (let j = Math.round(y); j < Math.round(y + h); j++) for (let i = Math.round(x); i < Math.round(x + w); i++) this.px(i, j, c)
  }

  /** A line `t` pixels thick (square brush: simple and good enough at these sizes). */
  line(x0: number, y0: number, x1: number, y1: number, c: Rgb, t = 2): void {
    const n = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))))
    for (let k = 0; k <= n; k++) this.rect(x0 + ((x1 - x0) * k) / n - t / 2, y0 + ((y1 - y0) * k) / n - t / 2, t, t, c)
  }

  /** Text with its top-left at (x, y); `s` = pixel scale of the 5x7 font. Returns the width. */
  text(x: number, y: number, str: string, c: Rgb = [0, 0, 0], s = 2): number {
    for (const [k, ch] of [...str].entries()) {
      const rows = glyph(ch)
      for (let r = 0; r < GLYPH_H; r++)
        for (let col = 0; col < GLYPH_W; col++) if (rows[r] & (1 << (GLYPH_W - 1 - col))) this.rect(x + (k * (GLYPH_W + 1) + col) * s, y + r * s, s, s, c)
    }
    return textWidth(str, s)
  }

  encode(): Buffer {
    return PNG.sync.write(this.png)
  }
}

export const textWidth = (str: string, s = 2) => [...str].length * (GLYPH_W + 1) * s
