/**
 * Where a prebuilt addon lives in the package, shared by the install script (is there one that fits?) and the
 * prebuild script (put it there): prebuilds/<platform>-<arch>/dmaload.<libc>.node, prebuildify's layout. The
 * runtime loader, src/engine/binding.ts, looks in the same place.
 */
import { join } from 'node:path';

/** 'glibc' or 'musl' on Linux (how prebuilt addons are tagged), '' elsewhere. */
export function libc() {
  if (process.platform !== 'linux') return '';
  const saved = process.report.excludeNetwork;
  process.report.excludeNetwork = true; // the header is all we need; skip the slow interface scan
  try {
    return process.report.getReport().header.glibcVersionRuntime ? 'glibc' : 'musl';
  } finally {
    process.report.excludeNetwork = saved;
  }
}

/** This machine's prebuilt: its folder, file and a label such as 'linux-x64 (glibc)'. */
export function prebuiltFor(root) {
  const tag = libc();
  const platform = `${process.platform}-${process.arch}`;
  const dir = join(root, 'prebuilds', platform);
  return { dir, file: join(dir, `dmaload${tag ? `.${tag}` : ''}.node`), label: `${platform}${tag ? ` (${tag})` : ''}` };
}
