/**
 * The share server's `allowSources` rules (src/share/sources.ts), by themselves: which references a rule lets a
 * client make the server fetch. The oracle is the table below, written from the documented rule (same scheme, host
 * and port; a path or key under the prefix by whole segments; an organisation or one repository on the hub).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { allowRule, allowedBy } from '../../src/share/sources.js';

const rules = ['https://models.example/org/', 'http://127.0.0.1:8080/m', 's3://bucket/team/models', 'hf://org/', 'hf://other/one', 'hf://datasets/data/'].map(
  (r) => allowRule(r),
);

test('allowSources: what each rule allows and refuses', () => {
  const cases: Array<[string, boolean]> = [
    ['https://models.example/org/a.safetensors', true],
    ['https://models.example/org/sub/a.safetensors?X-Amz-Signature=1', true],
    ['https://MODELS.example/org/a.safetensors', true], // host names are case-insensitive
    ['https://models.example:443/org/a', true], // the default port is the same origin
    ['https://models.example/org', false], // the rule ends in '/': only what is under it
    ['https://models.example/orgs/a', false],
    ['https://models.example/org/../secret', false],
    ['https://models.example/org/%2e%2e/secret', false],
    ['https://models.example.evil.example/org/a', false],
    ['https://models.example@evil.example/org/a', false],
    ['http://models.example/org/a', false], // another scheme
    ['https://models.example:8443/org/a', false], // another port
    ['http://127.0.0.1:8080/m', true],
    ['http://127.0.0.1:8080/m/x.bin', true],
    ['http://127.0.0.1:8080/m-private/x.bin', false], // whole segments
    ['http://127.0.0.1:8081/m/x.bin', false],
    ['http://127.0.0.1/m/x.bin', false],
    ['s3://bucket/team/models/a.safetensors', true],
    ['s3://bucket/team/models', true],
    ['s3://bucket/team/models-old/a', false],
    ['s3://bucket/team/models/../secrets/a', false],
    ['s3://bucket/team/models/%2E%2E/a', false],
    ['s3://bucket2/team/models/a', false],
    ['s3://Bucket/team/models/a', false], // bucket names are exact
    ['hf://org/model/model.safetensors', true],
    ['hf://org/model@v1.0/model.safetensors', true],
    ['hf://org/model/../../etc/passwd', false],
    ['hf://org2/model/model.safetensors', false],
    ['hf://other/one/model.safetensors', true],
    ['hf://other/two/model.safetensors', false],
    ['hf://datasets/org/model/x.bin', false], // a rule for models does not allow datasets
    ['hf://datasets/data/set/x.bin', true],
    ['hf://gpt2/model.safetensors', false], // a repository without an organisation matches no ORG rule
    ['ftp://models.example/org/a', false],
    ['/etc/passwd', false],
    ['', false],
  ];
  for (const [ref, want] of cases) assert.equal(allowedBy(rules, ref), want, ref);
  assert.equal(allowedBy([], 'https://models.example/org/a'), false, 'no rule allows nothing');
});

test('allowSources: a rule that is not one is ERR_INVALID_ARG_VALUE', () => {
  for (const bad of ['', 'models.example/org/', 'ftp://x/', 'https://u:p@h/', 'https://h/?a=1', 'https://h/#f', 's3://', 'hf://', 'hf://a/b/c', 7, null]) {
    assert.throws(() => allowRule(bad), { code: 'ERR_INVALID_ARG_VALUE' }, String(bad));
  }
});
