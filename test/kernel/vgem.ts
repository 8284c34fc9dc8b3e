/** A DRM device to import dma-bufs into (vgem, loaded with modprobe when it is not there yet), opened once per file. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync } from 'node:fs';

let drmFd = -1;

/** The DRM device's fd, opened on first use; an assertion failure when no /dev/dri/card* appears. */
export function drm(): number {
  if (drmFd >= 0) return drmFd;
  if (!existsSync('/dev/dri/card0')) {
    try {
      execFileSync('modprobe', ['vgem'], { stdio: 'ignore' });
    } catch {
      // reported below as a missing device
    }
  }
  const card = existsSync('/dev/dri') ? readdirSync('/dev/dri').find((n) => n.startsWith('card')) : undefined;
  assert.ok(card, 'no /dev/dri/card* after modprobe vgem');
  drmFd = openSync(`/dev/dri/${card}`, 'r+');
  return drmFd;
}

/** Closes the device if drm() opened it (for the test file's after()). */
export function closeDrm(): void {
  if (drmFd >= 0) closeSync(drmFd);
  drmFd = -1;
}
