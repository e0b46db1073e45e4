const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu',
    '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const page = await browser.newPage({ viewport: { width: 1500, height: 820 } });
  await page.goto('http://127.0.0.1:5055/#/experiments/1/runs', { waitUntil: 'load' });
  await page.waitForTimeout(8000);
  const close = page.locator('button[aria-label="Close"]').first();  // the assistant side panel
  if (await close.count()) { try { await close.click({ timeout: 2000 }); } catch (e) {} }
  const expand = page.locator('[data-testid="runs-table-expand-button"], button:has(svg) >> nth=0');
  const plus = page.locator('text=fmnist-hf').locator('xpath=preceding::*[self::button or @role="button"][1]');
  try { await plus.click({ timeout: 3000 }); } catch (e) { console.log('expand by button failed', e.message.split('\n')[0]); }
  await page.waitForTimeout(2000);
  await page.screenshot({ path: 'table.png' });
  // the chart view: every run's best-so-far train accuracy by LLM answer
  await page.mouse.click(296, 119);  // the chart view's button, beside the table's
  await page.waitForTimeout(3000);
  await page.screenshot({ path: 'charts.png' });
  await browser.close();
})();
